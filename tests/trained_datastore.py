"""A synthetic studies folder with a trained model and slice map, made in the test process in seconds.

The server tests that need a map (suggestions, classification, studies that change on disk) start from
here instead of training through the server: :func:`make_trained_datastore` writes CT-like studies and runs
the app's own training function (``run_training``, the one the ``ss_stylegan`` trainer calls) with the tiny
test settings into the workspace the server will use.

The tests make such a folder once per session (the ``trained_template`` fixture of ``conftest.py``) and give
each test its own copy (:func:`copy_trained_datastore`), so no test sees what another one did.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "monailabel_app") not in sys.path:
    sys.path.insert(0, str(REPO / "monailabel_app"))

from lib.configs.settings import AppSettings  # noqa: E402
from lib.trainers.ss_stylegan import run_training  # noqa: E402
from server_harness import TINY_CONF  # noqa: E402

from ss_stylegan.data.cache import find_studies  # noqa: E402
from ss_stylegan.data.fingerprint import Fingerprint, stamp  # noqa: E402
from ss_stylegan.data.synthetic import make_synthetic_datastore  # noqa: E402
from ss_stylegan.workspace import Workspace  # noqa: E402


def make_trained_datastore(studies: Path, conf: dict[str, str] | None = None, n_studies: int = 3,
                           n_slices: int = 12, random_state: int = 0) -> dict[str, object]:
    """Write ``n_studies`` synthetic studies into ``studies`` and train + publish a tiny model over them.

    Returns the training summary (``model_version``, ``n_slices``, ...).
    """
    make_synthetic_datastore(studies, n_studies=n_studies, n_slices=n_slices, size=32, random_state=random_state)
    return train_datastore(studies, conf)


def train_datastore(studies: Path, conf: dict[str, str] | None = None) -> dict[str, object]:
    """Train + publish a tiny model over the studies already in ``studies`` (``TINY_CONF`` updated with
    ``conf``), as the server's trainer does. Returns the training summary."""
    import torch

    settings = AppSettings.from_conf({**TINY_CONF, **(conf or {})}, studies)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_training(Workspace(settings.workspace), studies, settings, settings.train_cfg, "cpu")
    finally:
        torch.set_num_threads(threads)


def copy_trained_datastore(template: Path, dest: Path) -> Path:
    """Copy a studies folder made by :func:`make_trained_datastore` (its workspace ``.ss_stylegan`` included)
    to ``dest`` and return ``dest``, a trained datastore the server serves as it would serve the original.

    The workspace names its files by relative paths (the ``current.json`` pointer, the version folders), so
    the copy works as it is, but its slice map records each study's stamp (size, times, inode), and a copied
    file has another inode and change time: a server would hash every study on its first sweep, find the
    content the map recorded, and publish a new map version with the new stamps (studies answering 409 until
    then). So that every test starts from a settled map, the copy's map is published again here (a new version
    of the same model, as the server would publish it) with the stamps of the copied files and the recorded
    content hashes. ``test_trained_copy`` checks what a plain copy does.
    """
    template, dest = Path(template), Path(dest)
    shutil.copytree(template, dest, symlinks=True)
    workspace = Workspace(dest / ".ss_stylegan")
    slice_map = workspace.load_map()
    assert slice_map.version is not None
    paths = {study.image_id: study.path for study in find_studies(dest)}
    prints = {image_id: Fingerprint(stamp(paths[image_id]), recorded.get("sha256")).to_dict()
              for image_id, recorded in slice_map.fingerprints.items()}
    workspace.publish_update(dataclasses.replace(slice_map, fingerprints=prints), slice_map.version)
    return dest
