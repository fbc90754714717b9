"""SS-StyleGAN: few-label classification of medical image slices.

Cohen Hochberg, Greenspan, Giryes, "A self supervised StyleGAN for image annotation and
classification with extremely limited labels", IEEE TMI 41(12), 2022 (arXiv:2312.15972).

The package is usable without a server: slice extraction (:mod:`ss_stylegan.data`), networks
(:mod:`ss_stylegan.model.networks`), losses, training, embedding into W, t-SNE projection, farthest
point selection and 1-nearest-neighbour classification.
"""

__version__ = "0.1.0"
