"""The trained datastore the server tests copy (``trained_template`` / ``trained_studies`` in ``conftest.py``):
a server over a copy serves the trained map as it is (no study is read again), and the template the copies
are made from never changes.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from folder_snapshot import snapshot
from server_harness import TINY_CONF, start_server

from ss_stylegan.workspace import Workspace

pytestmark = pytest.mark.server


def test_a_copy_is_served_as_trained_and_the_template_never_changes(
        tmp_path: Path, trained_template: Callable[[int], Path], trained_studies: Callable[..., Path]) -> None:
    template = trained_template(3)
    files = snapshot(template)
    studies = trained_studies()
    template_ws, ws = Workspace(template / ".ss_stylegan"), Workspace(studies / ".ss_stylegan")
    copied = ws.current_version()
    assert copied is not None and copied.folder.parent == ws.maps_dir  # the pointer names a folder of the copy
    pointer = json.loads(ws.pointer_path.read_text(encoding="utf-8"))
    assert not Path(pointer["current"]).is_absolute() and not Path(pointer["previous"]).is_absolute()
    assert ws.load_map(copied).model_version == template_ws.load_map().model_version

    trained = ws.load_map(copied)

    with start_server(studies, TINY_CONF, log_path=tmp_path / "server.log") as server:
        block = server.get_json("/info/")["ss_stylegan"]
        assert block["state"] == "ready" and block["n_embedded"] == 36 and block["n_images_embedded"] == 3, block
        assert block["model_version"] == trained.model_version and block["errors"] == {}
        time.sleep(2.5)  # more than one sweep of the studies against the map (SWEEP_S = 1 s)
        for _ in range(3):
            block = server.get_json("/info/")["ss_stylegan"]
            time.sleep(0.5)
        assert block["embedding"] == [], block
        for image, cls in (("study_01", "normal"), ("study_02", "lesion")):
            assert server.request("PUT", "/slicelabels/", {"image": image, "slice": 5, "class": cls})[0] == 200
        status, ans = server.request("POST", "/infer/classify?image=study_00", {})  # 409 if being read again
        assert status == 200 and ans["n_slices"] == 12, ans
        log = server.log(10000)
    # no study was taken for changed on disk and read again: the served map is the trained one, point for point,
    # with the content hashes training recorded
    assert "changed on disk" not in log, log
    served = ws.load_map()
    for name in ("image_ids", "slices", "w", "xy"):
        assert np.array_equal(getattr(served, name), getattr(trained, name)), name
    for image_id, recorded in trained.fingerprints.items():
        assert served.fingerprints[image_id] == recorded and len(recorded["sha256"]) == 64
    assert snapshot(template) == files


def test_a_plain_copy_of_a_trained_folder_is_recognised_by_content(tmp_path: Path,
                                                                   trained_template: Callable[[int], Path]) -> None:
    """Train on one machine, copy the folder to the server's (new inodes and times): the server hashes each
    study once, finds the content the map recorded at training and keeps every point; nothing is read again."""
    template = trained_template(3)
    studies = tmp_path / "studies"
    shutil.copytree(template, studies, symlinks=True)
    trained = Workspace(studies / ".ss_stylegan").load_map()
    assert all(len(fp["sha256"]) == 64 for fp in trained.fingerprints.values())  # recorded at training
    with start_server(studies, TINY_CONF, log_path=tmp_path / "server.log") as server:
        for image, cls in (("study_01", "normal"), ("study_02", "lesion")):
            assert server.request("PUT", "/slicelabels/", {"image": image, "slice": 5, "class": cls})[0] == 200
        deadline = time.monotonic() + 60
        while True:  # 409 until the first sweep has compared the copied studies with the map
            status, ans = server.request("POST", "/infer/classify?image=study_00", {})
            if status != 409 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert status == 200 and ans["n_slices"] == 12, ans
        log = server.log(10000)
    assert "changed on disk" not in log, log
    served = Workspace(studies / ".ss_stylegan").load_map()
    for name in ("image_ids", "slices", "w", "xy"):
        assert np.array_equal(getattr(served, name), getattr(trained, name)), name
    for image_id, recorded in trained.fingerprints.items():
        assert served.fingerprints[image_id]["sha256"] == recorded["sha256"]
        assert served.fingerprints[image_id]["inode"] == (studies / f"{image_id}.nii.gz").stat().st_ino
