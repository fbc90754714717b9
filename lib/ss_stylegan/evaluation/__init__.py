"""Parts of the evaluation (``python -m ss_stylegan.evaluate``) that have a home of their own.

- :mod:`.grid` -- the pipelines scored for each embedding: the paper's (FPS / random in the map, 1-NN in the
  map) and every selection x classifier in the whole embedding (:mod:`ss_stylegan.selection`,
  :mod:`ss_stylegan.classification.features`).
- :mod:`.studies` -- study-level scoring: is a scan positive for a class, by the slice majority and by the
  runs rule of :mod:`ss_stylegan.labelling.findings`, against the truth of its slices.
"""
