"""A synthetic studies folder with a trained model and slice map, made in the test process in seconds.

The server tests that need a map (suggestions, classification, studies that change on disk) start from
here instead of training through the server: :func:`make_trained_datastore` writes CT-like studies and runs
the app's own training function (``run_training``, the one the ``ss_stylegan`` trainer calls) with the tiny
test settings into the workspace the server will use.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "monailabel_app") not in sys.path:
    sys.path.insert(0, str(REPO / "monailabel_app"))

from lib.configs.settings import AppSettings  # noqa: E402
from lib.trainers.ss_stylegan import run_training  # noqa: E402
from server_harness import TINY_CONF  # noqa: E402

from ss_stylegan.data.synthetic import make_synthetic_datastore  # noqa: E402
from ss_stylegan.workspace import Workspace  # noqa: E402


def make_trained_datastore(studies: Path, conf: dict[str, str] | None = None, n_studies: int = 3,
                           n_slices: int = 12, random_state: int = 0) -> dict[str, object]:
    """Write ``n_studies`` synthetic studies into ``studies`` and train + publish a tiny model over them.

    Returns the training summary (``model_version``, ``n_slices``, ...).
    """
    import torch

    make_synthetic_datastore(studies, n_studies=n_studies, n_slices=n_slices, size=32, random_state=random_state)
    settings = AppSettings.from_conf({**TINY_CONF, **(conf or {})}, studies)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_training(Workspace(settings.workspace), studies, settings, settings.train_cfg, "cpu")
    finally:
        torch.set_num_threads(threads)
