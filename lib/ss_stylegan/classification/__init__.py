"""Classifying every slice from the labelled few: one module per classifier.

In the 2-D map: 1-NN (:mod:`.nearest`, the paper's; kept between calls by a server over
:mod:`.dynamic_nearest`). In the whole embedding: :mod:`.features` (label spreading, logistic regression,
cosine k-NN).
"""
