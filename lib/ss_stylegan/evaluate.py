"""``python -m ss_stylegan.evaluate``: the evaluation's command line (:mod:`ss_stylegan.evaluation.cli`)."""

from ss_stylegan.evaluation.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
