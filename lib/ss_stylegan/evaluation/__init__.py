"""Parts of the evaluation (``python -m ss_stylegan.evaluate``) that have a home of their own.

- :mod:`.studies` -- study-level scoring: is a scan positive for a class, by the slice majority and by the
  runs rule of :mod:`ss_stylegan.labelling.findings`, against the truth of its slices.
"""
