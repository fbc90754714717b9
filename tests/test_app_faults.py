"""Bad input and faults over HTTP against a real server: broken and odd files in the studies folder, an
unreadable ``datastore_v2.json``, training stopped with ``DELETE /train/`` and the server killed during
training (both resume from the last checkpoint, labels intact), and invalid ``--conf`` settings.

Every test sets up what it needs, so the tests run alone and in any order: the tests before training share
an untrained server, the training test has one of its own, and the tests of a trained map share a server over
the same odd studies with a tiny model trained over them in the test process (the app's own training function).
"""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from server_harness import TINY_CONF, RunningServer, ServerStartError, start_server
from trained_datastore import train_datastore

from ss_stylegan.data.synthetic import make_synthetic_datastore

pytestmark = pytest.mark.server

LABELS = [{"image": "study_00", "slice": 4, "class": "lesion"}, {"image": "picture", "slice": 0, "class": "normal"}]


def _write_odd_studies(studies: Path) -> None:
    eye = np.eye(4)
    good = nib.load(str(studies / "study_00.nii.gz")).get_fdata().astype(np.float32)
    (studies / "corrupt.nii.gz").write_bytes((studies / "study_01.nii.gz").read_bytes()[:400])  # truncated
    (studies / "notes.txt").write_text("not an image", encoding="utf-8")
    nib.save(nib.Nifti1Image(np.stack([good, good], axis=-1), eye), str(studies / "fourd.nii.gz"))
    nib.save(nib.Nifti1Image(good[:, :, 5:6], eye), str(studies / "single.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 6), np.float32), eye), str(studies / "constant.nii.gz"))
    nib.save(nib.Nifti1Image(np.full((32, 32, 4), np.nan, np.float32), eye), str(studies / "allnan.nii.gz"))
    partly = good.copy()
    partly[:4, :4, :] = np.nan
    nib.save(nib.Nifti1Image(partly, eye), str(studies / "somenan.nii.gz"))
    picture = (np.clip(good[:, :, 6], -1000, 400) + 1000) / 1400 * 255
    Image.fromarray(picture.astype(np.uint8)).save(studies / "picture.png")
    (studies / "datastore_v2.json").write_text('{"name": "trunc', encoding="utf-8")  # a state file cut short by a crash


def _checkpoint_steps(studies: Path) -> list[int]:
    records = (studies / ".ss_stylegan" / "checkpoints").glob("model-*/ckpt-*.pt.json")
    return sorted(int(p.name[5:13]) for p in records)


def _wait_for_checkpoint(server: RunningServer, step: int, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(s >= step for s in _checkpoint_steps(server.studies)):
            return
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint at step {step} after {timeout_s} s\n{server.log()}")


def _odd_datastore(studies: Path) -> Path:
    """3 good synthetic studies (12 slices each) and the broken and odd files of :func:`_write_odd_studies`."""
    make_synthetic_datastore(studies, n_studies=3, n_slices=12, size=32, random_state=1)
    _write_odd_studies(studies)
    return studies


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    """An untrained server over the odd studies, for the tests before training (they never train it)."""
    root = tmp_path_factory.mktemp("faults")
    with start_server(_odd_datastore(root / "studies"), TINY_CONF, log_path=root / "server.log") as srv:
        yield srv


@pytest.fixture
def training_server(tmp_path: Path) -> RunningServer:
    """An untrained server of the test's own over the odd studies, to train."""
    with start_server(_odd_datastore(tmp_path / "studies"), TINY_CONF, log_path=tmp_path / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def trained_server(tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    """A server over the odd studies with a tiny model trained over them (6 steps), for the tests that read
    the map and classify."""
    root = tmp_path_factory.mktemp("faults-trained")
    studies = _odd_datastore(root / "studies")
    summary = train_datastore(studies, {"steps": "6"})
    assert summary["phase"] == "done", summary
    with start_server(studies, TINY_CONF, log_path=root / "server.log") as srv:
        yield srv


def test_server_starts_despite_bad_files(server: RunningServer) -> None:
    assert list(server.studies.glob("datastore_v2.json.unreadable-*")), "the cut-short state file was set aside"
    datastore = server.get_json("/datastore/?output=all")
    assert {"study_00", "corrupt", "fourd", "single", "picture"} <= set(datastore["objects"])
    block = server.get_json("/info/")["ss_stylegan"]
    assert block["state"] == "untrained" and "notes.txt" in block["ignored_files"]


def test_labels_before_training_are_validated(server: RunningServer) -> None:
    status, rec = server.request("PUT", "/slicelabels/", {"image": "study_00", "slice": 4, "class": "lesion"})
    assert status == 200, rec
    status, rec = server.request("PUT", "/slicelabels/", {"image": "picture", "slice": 0, "class": "normal"})
    assert status == 200, rec  # a 2-D picture is a study of one slice
    status, body = server.request("PUT", "/slicelabels/", {"image": "picture", "slice": 1, "class": "normal"})
    assert status == 422 and "0..0" in body["detail"]
    status, body = server.request("PUT", "/slicelabels/", {"image": "corrupt", "slice": 0, "class": "normal"})
    assert status == 422 and "cannot read" in body["detail"]
    status, body = server.request("PUT", "/slicelabels/", {"image": "fourd", "slice": 0, "class": "normal"})
    assert status == 422 and "4-D" in body["detail"]
    status, body = server.request("PUT", "/slicelabels/", {"image": "study_00", "slice": "x", "class": "normal"})
    assert status == 422


def test_training_stopped_then_killed_resumes_from_checkpoint(training_server: RunningServer) -> None:
    server = training_server
    steps = 20  # the stop and the kill land after step 2 and 4: far from the end even when this test's polls are slow
    for label in LABELS:
        status, rec = server.request("PUT", "/slicelabels/", label)
        assert status == 200, rec
    status, _ = server.request("POST", "/train/ss_stylegan", {"steps": steps})
    assert status == 200
    _wait_for_checkpoint(server, 2)
    status, task = server.request("DELETE", "/train/")
    assert status == 200 and task["status"] == "STOPPED"
    block = server.get_json("/info/")["ss_stylegan"]
    assert block["state"] == "untrained" and "resumes" in block["message"]

    status, _ = server.request("POST", "/train/ss_stylegan", {"steps": steps})
    assert status == 200
    _wait_for_checkpoint(server, 4)
    server.restart(kill=True)  # the server and its training subprocess die at once
    block = server.get_json("/info/")["ss_stylegan"]
    assert block["state"] == "untrained" and "training stopped at step" in block["message"], block
    assert {(r["image"], r["slice"]) for r in server.get_json("/slicelabels/")["labels"]} == {
        ("study_00", 4), ("picture", 0)}

    status, _ = server.request("POST", "/train/ss_stylegan", {"steps": steps})
    assert status == 200
    block = server.wait_for_training()
    assert block["state"] == "ready", block
    assert block["progress"]["resumed_from_step"] >= 4
    assert block["model_version"].startswith(f"step{steps:08d}-")


def test_bad_studies_reported_and_the_rest_used(trained_server: RunningServer) -> None:
    server = trained_server
    block = server.get_json("/info/")["ss_stylegan"]
    assert {"corrupt", "fourd", "allnan"} <= set(block["errors"]), block["errors"]
    assert "4-D" in block["errors"]["fourd"]
    pts = server.get_json("/slicemap/")["points"]
    embedded = set(pts["image"])
    assert {"study_00", "study_01", "study_02", "single", "somenan", "picture"} <= embedded
    assert not {"corrupt", "fourd", "allnan", "constant"} & embedded
    assert pts["image"].count("picture") == 1 and pts["image"].count("single") == 1


def test_classify_bad_and_odd_studies(trained_server: RunningServer) -> None:
    server = trained_server
    for label in LABELS:  # both classes; the picture's one slice is its own nearest neighbour
        status, rec = server.request("PUT", "/slicelabels/", label)
        assert status == 200, rec
    status, ans = server.request("POST", "/infer/classify?image=picture", {})
    assert status == 200 and len(ans["slices"]) == 1 and ans["slices"][0]["class"] == "normal"
    status, ans = server.request("POST", "/infer/classify?image=somenan", {})
    assert status == 200 and len(ans["slices"]) == 12
    status, body = server.request("POST", "/infer/classify?image=corrupt", {})
    assert status == 422 and "cannot read" in body["detail"]
    status, body = server.request("POST", "/infer/classify?image=constant", {})
    assert status == 409 and "foreground" in body["detail"]


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"resolution": "48"}, "resolution must be one of"),
        ({"devcie": "cpu"}, "unknown --conf setting"),
    ],
)
def test_invalid_conf_refuses_to_start(tmp_path: Path, conf: dict[str, str], message: str) -> None:
    with pytest.raises(ServerStartError, match=message):
        start_server(tmp_path / "studies", conf, start_timeout_s=60)
