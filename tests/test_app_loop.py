"""The whole loop over HTTP against a real MONAI Label server: train -> suggest -> label -> classify,
studies added later (also as a DICOM series folder and an .mha file) while the server keeps answering,
a publish interrupted half-way, concurrent annotators, restart keeping labels, repeatable random
suggestions, and the end of the suggestions.

Every test sets up what it needs, so the tests run alone and in any order. The datastore is tiny (3 studies
x 12 slices at 32x32, a 4-step tiny model): the tests before and of training start an untrained server of
their own; the others start one over their own copy of a datastore trained once per session (the
``trained_studies`` fixture of ``conftest.py``) and make the labels they need. The tests that leave the
studies and labels as they are (they read, classify, reserve suggestions under client ids of their own, or
restart the server) share one such server with twelve labels (``shared_server``).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import SimpleITK as sitk
from dicom_series import write_dicom_series
from folder_snapshot import snapshot
from server_harness import TINY_CONF, RunningServer, start_server

from ss_stylegan.config import derive_seed
from ss_stylegan.data.cache import find_studies
from ss_stylegan.data.synthetic import make_synthetic_datastore, make_synthetic_study
from ss_stylegan.maps.slice_map import MapVersion, SliceMap
from ss_stylegan.selection.random_pick import random_free
from ss_stylegan.storage.atomic import atomic_write_text
from ss_stylegan.workspace import Workspace

pytestmark = pytest.mark.server


def _remove_study(studies: Path, name: str) -> None:
    """Delete a study (file, DICOM folder) and the JSON sidecar the synthetic generator wrote beside it."""
    path = studies / name
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    image_id = name.split(".")[0]
    (studies / f"{image_id}.json").unlink(missing_ok=True)


def _wait_map_settled(server: RunningServer, timeout_s: float = 60.0) -> tuple[dict, dict]:
    """Wait until the map holds no study deleted from the folder (they leave it in the background, within a
    second or two); return ``/info/``'s ss_stylegan block and the ``/slicemap/`` points."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = server.get_json("/info/")["ss_stylegan"]
        pts = server.get_json("/slicemap/")["points"]
        if info["n_slices"] == len(pts["x"]):
            return info, pts
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)


def _classify_when_embedded(server: RunningServer, image_id: str, timeout_s: float = 120.0) -> tuple[int, dict]:
    """Classify a study added after training, retrying while the server answers 409 'being embedded'."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, ans = server.request("POST", f"/infer/classify?image={image_id}", {})
        if status != 409 or "being embedded" not in ans.get("detail", "") or time.monotonic() > deadline:
            return status, ans
        time.sleep(0.2)


def _upload(server: RunningServer, path: Path) -> requests.Response:
    with open(path, "rb") as fh:
        return requests.post(f"{server.url}/infer/classify", files={"file": (path.name, fh)},
                             data={"params": "{}"}, timeout=120)


# the tests here reserve every slice at once (count 1000) to reach the end of the suggestions
CONF = {**TINY_CONF, "suggestion_cap": "1000"}
# the labels of two annotators, alice (study_00, normal) and bob (study_01, lesion): (image, slice, class, user)
TWELVE_LABELS = [("study_00", s, "normal", "alice") for s in range(0, 6)] + \
                [("study_01", s, "lesion", "bob") for s in range(0, 6)]


def _put_labels(server: RunningServer, labels: list[tuple[str, int, str, str]]) -> None:
    for image, slice_index, cls, user in labels:
        status, body = server.request("PUT", "/slicelabels/", {"image": image, "slice": slice_index, "class": cls,
                                                               "user": user})
        assert status == 200, body


def _outside_study(folder: Path) -> Path:
    """A study that is not in the datastore (8 slices), to upload."""
    path = folder / "outside.nii.gz"
    if not path.exists():
        make_synthetic_study(path, n_slices=8, size=32, random_state=7)
    return path


@pytest.fixture
def untrained_server(tmp_path: Path) -> Iterator[RunningServer]:
    """A server of this test's own over 3 synthetic studies (12 slices each), not trained."""
    studies = tmp_path / "studies"
    make_synthetic_datastore(studies, n_studies=3, n_slices=12, size=32, random_state=0)
    with start_server(studies, CONF, log_path=tmp_path / "server.log") as srv:
        yield srv


@pytest.fixture
def server(tmp_path: Path, trained_studies: Callable[..., Path]) -> Iterator[RunningServer]:
    """A server of this test's own over its own copy of the trained datastore (the same 3 studies), no labels."""
    with start_server(trained_studies(), CONF, log_path=tmp_path / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory,
                  trained_template: Callable[[int], Path]) -> Iterator[RunningServer]:
    """One server over a copy of the trained datastore with the twelve labels of ``TWELVE_LABELS``, shared by
    the tests that leave its studies and labels as they are: they read, classify, reserve suggestions under
    client ids of their own (all of them together no more than the 24 unlabelled slices) or restart it. So
    each of them finds the same 3 studies, the same 12 labels and enough slices to suggest whatever ran before."""
    from trained_datastore import copy_trained_datastore

    root = tmp_path_factory.mktemp("loop-shared")
    studies = copy_trained_datastore(trained_template(3), root / "studies")
    with start_server(studies, CONF, log_path=root / "server.log") as srv:
        _put_labels(srv, TWELVE_LABELS)
        yield srv


def test_before_training_a_clear_answer(untrained_server: RunningServer) -> None:
    server = untrained_server
    info = server.get_json("/info/")
    block = info["ss_stylegan"]
    assert block["state"] == "untrained"
    assert block["classes"] == ["normal", "lesion"]
    assert block["n_embedded"] == 0 and block["n_labelled"] == 0
    assert set(info["trainers"]) == {"ss_stylegan"}
    assert set(info["strategies"]) == {"typiclust", "fps", "random", "probcover", "fps_w"}
    assert info["models"]["classify"]["type"] == "classification"

    status, body = server.request("POST", "/activelearning/fps", {})
    assert status == 409 and "not trained" in body["detail"]
    status, body = server.request("POST", "/infer/classify?image=study_00", {})
    assert status == 409, body
    status, body = server.request("GET", "/slicemap/")
    assert status == 409


def test_train_refuses_a_second_request_and_reports_progress(untrained_server: RunningServer) -> None:
    server = untrained_server
    status, task = server.request("POST", "/train/ss_stylegan", {})
    assert status == 200, task
    status, body = server.request("POST", "/train/ss_stylegan", {})
    assert status in (409, 429), body
    block = server.wait_for_training()
    assert block["state"] == "ready", block
    assert block["n_embedded"] == 36 and block["n_images_embedded"] == 3
    assert block["model_version"].startswith("step00000004-")
    progress = block["progress"]
    assert progress["step"] == 4 and progress["images_seen"] == 16
    assert {"loss/G", "loss/D"} <= set(progress["losses"])
    train = server.get_json("/train/")
    assert train["status"] == "DONE" and train["ss_stylegan"]["state"] == "ready"


def test_suggestions_are_distinct_per_client(shared_server: RunningServer) -> None:
    server = shared_server
    status, alice = server.request("POST", "/activelearning/fps", {"count": 3, "client_id": "alice"})
    assert status == 200, alice
    assert len(alice["suggestions"]) == 3
    first = alice["suggestions"][0]
    assert alice["id"] == first["id"] and alice["slice"] == first["slice"]
    assert len(first["position"]) == 2 and len(first["world"]) == 3 and first["reason"]
    later = alice["suggestions"][1:]
    assert all(s["distance"] > 0 for s in later)
    assert later[0]["distance"] >= later[1]["distance"]  # farthest point sampling: distances shrink

    status, bob = server.request("POST", "/activelearning/fps", {"count": 3, "client_id": "bob"})
    assert status == 200
    keys = lambda ans: {(s["id"], s["slice"]) for s in ans["suggestions"]}  # noqa: E731
    assert not keys(alice) & keys(bob)

    status, rnd = server.request("POST", "/activelearning/random", {"count": 2, "client_id": "carol"})
    assert status == 200 and len(rnd["suggestions"]) == 2
    assert not keys(rnd) & (keys(alice) | keys(bob))

    status, body = server.request("POST", "/activelearning/fps", {"count": 0})
    assert status == 422


def test_labels_validated_stored_changed_removed(server: RunningServer) -> None:
    ok = {"image": "study_00", "slice": 3, "class": "lesion", "user": "alice"}
    status, rec = server.request("PUT", "/slicelabels/", ok)
    assert status == 200 and rec["class"] == "lesion" and rec["user"] == "alice" and rec["timestamp"]

    status, body = server.request("PUT", "/slicelabels/", {**ok, "class": "tumour"})
    assert status == 422 and "normal" in body["detail"] and "lesion" in body["detail"]
    status, body = server.request("PUT", "/slicelabels/", {**ok, "slice": 12})
    assert status == 422 and "0..11" in body["detail"]
    status, body = server.request("PUT", "/slicelabels/", {**ok, "slice": -1})
    assert status == 422
    status, body = server.request("PUT", "/slicelabels/", {**ok, "image": "no_such_study"})
    assert status == 404

    status, rec = server.request("PUT", "/slicelabels/", {**ok, "class": "normal"})  # change
    assert status == 200 and rec["class"] == "normal"
    labels = server.get_json("/slicelabels/?image=study_00")["labels"]
    assert [(r["slice"], r["class"]) for r in labels] == [(3, "normal")]
    status, _ = server.request("DELETE", "/slicelabels/?image=study_00&slice=3")
    assert status == 200
    assert server.get_json("/slicelabels/")["labels"] == []
    status, _ = server.request("DELETE", "/slicelabels/?image=study_00&slice=3")
    assert status == 404


def test_two_clients_labelling_at_once_both_kept(server: RunningServer) -> None:
    jobs = TWELVE_LABELS
    results: list[int] = []

    def put(image: str, slice_index: int, cls: str, user: str) -> None:
        status, _ = server.request("PUT", "/slicelabels/", {"image": image, "slice": slice_index,
                                                            "class": cls, "user": user})
        results.append(status)

    threads = [threading.Thread(target=put, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * len(jobs)
    labels = server.get_json("/slicelabels/")["labels"]
    assert {(r["image"], r["slice"], r["class"]) for r in labels} == {j[:3] for j in jobs}
    database = server.studies / "labels" / "slice_class" / ".labels.sqlite"
    with sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True) as db:
        written = set(db.execute("SELECT image, slice FROM labels").fetchall())
    assert {j[:2] for j in jobs} <= written  # every acknowledged write is in the store of record on disk
    image_info = server.get_json("/datastore/image/info?image=study_01")
    assert image_info["slice_class"] == {"lesion": 6}

    status, text = server.request("GET", "/slicelabels/export.csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert status == 200 and len(rows) == 12
    assert set(rows[0]) == {"image", "slice", "class", "user", "timestamp"}


def test_suggestions_skip_labelled_slices(shared_server: RunningServer) -> None:
    server = shared_server
    # 16: with the 3 + 3 + 2 that test_suggestions_are_distinct_per_client reserves, every unlabelled slice
    status, ans = server.request("POST", "/activelearning/fps", {"count": 16, "client_id": "dave"})
    assert status == 200 and len(ans["suggestions"]) == 16, ans
    labelled = {(r["image"], r["slice"]) for r in server.get_json("/slicelabels/")["labels"]}
    assert not {(s["id"], s["slice"]) for s in ans["suggestions"]} & labelled


def test_classify_datastore_image(shared_server: RunningServer) -> None:
    server = shared_server  # its only references: the twelve labels of study_00 (normal) and study_01 (lesion)
    status, ans = server.request("POST", "/infer/classify?image=study_00", {})
    assert status == 200, ans
    assert ans["image"] == "study_00" and ans["n_slices"] == 12
    assert len(ans["slices"]) == 12
    assert sum(ans["summary"].values()) == 12 and set(ans["summary"]) == {"normal", "lesion"}
    assert ans["volume_class"] in ("normal", "lesion")
    for s in ans["slices"]:
        assert s["class"] in ("normal", "lesion") and 0.0 <= s["score"] <= 1.0
        assert s["neighbour"]["image"] in ("study_00", "study_01")
    own = {s["slice"]: s for s in ans["slices"]}
    for k in range(6):  # a labelled slice is its own nearest neighbour
        assert own[k]["class"] == "normal" and own[k]["neighbour"] == {
            "image": "study_00", "slice": k, "class": "normal", "distance": 0.0}

    status, body = server.request("POST", "/infer/classify?image=no_such_study", {})
    assert status == 404


def test_classify_uploaded_study(shared_server: RunningServer) -> None:
    server = shared_server
    path = _outside_study(server.studies.parent)
    with open(path, "rb") as fh:
        resp = requests.post(f"{server.url}/infer/classify", files={"file": ("outside.nii.gz", fh)},
                             data={"params": "{}"}, timeout=120)
    assert resp.status_code == 200, resp.text
    ans = resp.json()
    assert ans["image"] is None and ans["n_slices"] == 8
    assert 1 <= len(ans["slices"]) <= 8 and sum(ans["summary"].values()) == len(ans["slices"])

    resp = requests.post(f"{server.url}/infer/classify", files={"file": ("junk.nii.gz", b"not an image")},
                         data={"params": "{}"}, timeout=60)
    assert resp.status_code == 422 and "gzip" in resp.json()["detail"], resp.text


def test_slicemap(shared_server: RunningServer) -> None:
    server = shared_server
    pts = server.get_json("/slicemap/")["points"]
    assert len(pts["x"]) == len(pts["y"]) == len(pts["image"]) == 36
    assert sum(1 for v in pts["label"] if v) == 12
    assert set(pts["prediction"]) <= {"normal", "lesion"} and None not in pts["prediction"]


def test_new_study_embedded_without_retraining(server: RunningServer) -> None:
    _put_labels(server, TWELVE_LABELS)  # classifying needs labels of both classes
    ws = Workspace(server.studies / ".ss_stylegan")
    _wait_map_settled(server)
    published = ws.current_version()
    assert published is not None
    files = snapshot(published.folder)
    make_synthetic_study(server.studies / "late_study.nii.gz", n_slices=10, size=32, random_state=11)
    version = server.get_json("/info/")["ss_stylegan"]["model_version"]
    status, ans = _classify_when_embedded(server, "late_study")
    assert status == 200, ans
    assert ans["n_slices"] == 10 and len(ans["slices"]) >= 1
    block = server.get_json("/info/")["ss_stylegan"]
    assert block["n_images_embedded"] == 4 and block["model_version"] == version
    # the study went into a new version (same model); the version published before is unchanged
    updated = ws.current_version()
    assert updated is not None and updated != published and block["map"]["version"] == updated.name
    assert ws.load_map(updated).model_version == version and "late_study" in ws.load_map(updated).image_set()
    assert snapshot(published.folder) == files
    _remove_study(server.studies, "late_study.nii.gz")
    _wait_map_settled(server)
    status, ans = server.request("POST", "/activelearning/fps", {"count": 1000, "client_id": "late"})
    assert status == 200 and "late_study" not in {s["id"] for s in ans["suggestions"]}  # deleted: never suggested


def test_info_answers_while_a_new_study_is_embedded(server: RunningServer) -> None:
    _put_labels(server, TWELVE_LABELS)  # classifying needs labels of both classes
    n_before = _wait_map_settled(server)[0]["n_images_embedded"]
    # big enough that embedding it takes seconds (about 4 s here), so a blocked request would show
    make_synthetic_study(server.studies / "big_study.nii.gz", n_slices=4000, size=32, random_state=12)
    during: list[float] = []
    busy = None
    started = time.monotonic()
    deadline = started + 180
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        block = server.get_json("/info/")["ss_stylegan"]
        elapsed = time.perf_counter() - t0
        if "big_study" in block["embedding"]:
            during.append(elapsed)
            if busy is None:
                t0 = time.perf_counter()
                busy = server.request("POST", "/infer/classify?image=big_study", {})
                during.append(time.perf_counter() - t0)
        elif block["n_images_embedded"] == n_before + 1:
            break
        time.sleep(0.05)
    window = time.monotonic() - started
    assert busy is not None and len(during) >= 3, f"the embedding was not observed: {during}\n{server.log()}"
    # GET /info/ and classify never wait for the embedding (a blocked call would last most of the window)
    assert max(during) < window / 2, (during, window)
    status, body = busy
    assert status == 409 and "new studies are being embedded, retry in a few seconds" in body["detail"], busy
    status, ans = _classify_when_embedded(server, "big_study")
    assert status == 200 and ans["n_slices"] == 4000, ans


def test_dicom_series_and_mha_studies_are_used(server: RunningServer) -> None:
    _put_labels(server, TWELVE_LABELS)  # classifying needs labels of both classes
    hu_xyz = nib.load(str(server.studies / "study_02.nii.gz")).get_fdata()
    hu_zyx = np.ascontiguousarray(np.transpose(hu_xyz, (2, 1, 0))).astype(np.int16)
    write_dicom_series(server.studies / "ct_dicom", hu_zyx)
    sitk.WriteImage(sitk.GetImageFromArray(hu_zyx[:7]), str(server.studies / "scan_mha.mha"))
    for image_id, depth in (("ct_dicom", 12), ("scan_mha", 7)):
        status, ans = _classify_when_embedded(server, image_id)
        assert status == 200, ans
        assert ans["image"] == image_id and ans["n_slices"] == depth and len(ans["slices"]) >= 1
    assert "scan_mha" in server.get_json("/datastore/?output=all")["objects"]  # listed by MONAI Label too
    points = server.get_json("/slicemap/")["points"]
    assert {"ct_dicom", "scan_mha"} <= set(points["image"])

    status, ans = server.request("POST", "/activelearning/fps", {"count": 1000, "client_id": "formats"})
    assert status == 200
    suggested = {s["id"] for s in ans["suggestions"]}
    assert {"ct_dicom", "scan_mha"} <= suggested

    for image_id in ("ct_dicom", "scan_mha"):
        status, rec = server.request("PUT", "/slicelabels/", {"image": image_id, "slice": 2, "class": "lesion"})
        assert status == 200, rec
    status, body = server.request("PUT", "/slicelabels/", {"image": "ct_dicom", "slice": 12, "class": "lesion"})
    assert status == 422 and "0..11" in body["detail"]
    status, ans = server.request("POST", "/infer/classify?image=ct_dicom", {})
    own = {s["slice"]: s for s in ans["slices"]}
    assert status == 200 and own[2]["class"] == "lesion" and own[2]["neighbour"]["image"] == "ct_dicom"

    for image_id in ("ct_dicom", "scan_mha"):
        assert server.request("DELETE", f"/slicelabels/?image={image_id}&slice=2")[0] == 200
    _remove_study(server.studies, "ct_dicom")
    _remove_study(server.studies, "scan_mha.mha")
    status, body = server.request("POST", "/infer/classify?image=ct_dicom", {})
    assert status == 404
    _wait_map_settled(server)
    status, ans = server.request("POST", "/activelearning/fps", {"count": 1000, "client_id": "formats"})
    assert status == 200 and ans["suggestions"]
    assert not {"ct_dicom", "scan_mha"} & {s["id"] for s in ans["suggestions"]}  # deleted studies are never suggested


def test_interrupted_publish_keeps_the_previous_map(server: RunningServer) -> None:
    _put_labels(server, TWELVE_LABELS)  # classifying needs labels of both classes
    ws = Workspace(server.studies / ".ss_stylegan")
    before, _ = _wait_map_settled(server)
    pointer = ws.pointer_path.read_text(encoding="utf-8")
    original = ws.current_version()
    assert original is not None and original.folder.parent == ws.maps_dir
    outside = _outside_study(server.studies.parent)

    def serving_the_original() -> None:
        block = server.get_json("/info/")["ss_stylegan"]
        assert block["state"] == "ready" and block["model_version"] == before["model_version"], block
        assert block["n_embedded"] == before["n_embedded"]
        resp = _upload(server, outside)
        assert resp.status_code == 200 and resp.json()["model_version"] == before["model_version"], resp.text

    # a training killed after copying its checkpoint: a new version folder, the pointer not switched
    half = MapVersion.in_folder(ws.maps_dir / "20000101-000000-000000000-step00000099-interrupted")
    shutil.copytree(original.checkpoint_dir, half.checkpoint_dir)
    half.map_path.write_bytes(b"partial")
    serving_the_original()
    # a pointer naming that half-written folder: the previous complete version is served
    atomic_write_text(ws.pointer_path, json.dumps({"current": f"maps/{half.name}",
                                                   "previous": f"maps/{original.name}"}))
    serving_the_original()

    # a complete map whose published model is missing: uploads get a clear 409 (not a 500) and a new
    # study fails to embed; once a complete version is current again it is retried and embedded
    # (its fingerprints are the original's: nothing to adopt, so the server publishes no update of it)
    m = ws.load_map(original)
    broken = MapVersion.in_folder(ws.maps_dir / "20000101-000000-000000001-no-model")
    ws.save_map(SliceMap(m.image_ids, m.slices, m.positions, m.w, m.xy, "no-model", m.errors, m.depths,
                         m.fingerprints), broken)
    atomic_write_text(ws.pointer_path, json.dumps({"current": f"maps/{broken.name}", "previous": None}))
    assert server.get_json("/info/")["ss_stylegan"]["model_version"] == "no-model"
    resp = _upload(server, outside)
    assert resp.status_code == 409 and "train again" in resp.json()["detail"], resp.text
    make_synthetic_study(server.studies / "retry_study.nii.gz", n_slices=6, size=32, random_state=13)
    deadline = time.monotonic() + 60
    while "retry_study" not in server.get_json("/info/")["ss_stylegan"]["errors"]:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    status, body = server.request("POST", "/infer/classify?image=retry_study", {})
    # "embedding failed", or the retry (2 s back-off) has already started when the machine was slow
    assert status == 409 and ("embedding failed" in body["detail"] or "being embedded" in body["detail"]), body
    atomic_write_text(ws.pointer_path, pointer)
    deadline = time.monotonic() + 60
    while True:
        block = server.get_json("/info/")["ss_stylegan"]
        if block["n_images_embedded"] == before["n_images_embedded"] + 1:
            break
        assert time.monotonic() < deadline, f"{block}\n{server.log()}"
        time.sleep(0.3)
    assert "retry_study" not in block["errors"] and block["model_version"] == before["model_version"]
    status, ans = server.request("POST", "/infer/classify?image=retry_study", {})
    assert status == 200 and ans["n_slices"] == 6, ans


def test_restart_keeps_labels_and_map(shared_server: RunningServer) -> None:
    server = shared_server
    before = server.get_json("/slicelabels/")["labels"]
    server.restart(kill=True)
    assert server.get_json("/slicelabels/")["labels"] == before
    block = server.get_json("/info/")["ss_stylegan"]
    assert block["state"] == "ready" and block["n_labelled"] == 12


def test_random_suggestions_follow_random_state(server: RunningServer) -> None:
    """A new server's n-th random draw is seeded with derive_seed(random_state, n)."""
    _put_labels(server, TWELVE_LABELS)
    present = {s.image_id for s in find_studies(server.studies)}
    info, pts = _wait_map_settled(server)
    assert set(pts["image"]) <= present
    seed = info["settings"]["random_state"]
    labelled = [i for i, v in enumerate(pts["label"]) if v]
    gone: list[int] = []
    xy = np.stack([pts["x"], pts["y"]], axis=1)
    for call in range(2):
        status, ans = server.request("POST", "/activelearning/random", {"count": 3, "client_id": "grace"})
        assert status == 200, ans
        picks = random_free(xy, np.asarray(labelled), np.asarray(gone, dtype=np.int64), 3, derive_seed(seed, call))
        assert [(s["id"], s["slice"]) for s in ans["suggestions"]] == \
            [(pts["image"][p.index], pts["slice"][p.index]) for p in picks]
    for s in ans["suggestions"]:  # grace labels what she was given (frees her reservations)
        status, _ = server.request("PUT", "/slicelabels/", {"image": s["id"], "slice": s["slice"],
                                                            "class": "lesion", "user": "grace"})
        assert status == 200


def test_done_when_everything_is_labelled(server: RunningServer) -> None:
    _put_labels(server, TWELVE_LABELS)
    status, ans = server.request("POST", "/activelearning/fps", {"count": 1000, "client_id": "erin"})
    assert status == 200
    rest = ans["suggestions"]
    status, ans = server.request("POST", "/activelearning/fps", {"client_id": "frank"})
    assert status == 200 and ans["done"] is True and "another annotator" in ans["message"] and "id" not in ans
    for s in rest:
        status, _ = server.request("PUT", "/slicelabels/", {"image": s["id"], "slice": s["slice"],
                                                            "class": "normal", "user": "erin"})
        assert status == 200
    status, ans = server.request("POST", "/activelearning/random", {"client_id": "frank"})
    assert status == 200 and ans["done"] is True and "every embedded slice is labelled" in ans["message"]
    assert "id" not in ans


def test_workspace_is_not_a_study(shared_server: RunningServer) -> None:
    server = shared_server
    block = server.get_json("/info/")["ss_stylegan"]
    assert block["errors"] == {}
    version = Workspace(server.studies / ".ss_stylegan").current_version()
    assert version is not None and version.map_path.exists() and list(version.checkpoint_dir.glob("ckpt-*.pt"))
