"""The whole loop over HTTP against a real MONAI Label server: train -> suggest -> label -> classify,
studies added later, concurrent annotators, restart keeping labels, and the end of the suggestions.

One server over a tiny synthetic datastore (3 studies x 12 slices at 32x32, a 4-step tiny model) is
trained once and shared by the tests of this module, which run in order.
"""

from __future__ import annotations

import csv
import io
import threading

import pytest
import requests

from server_harness import TINY_CONF, RunningServer, start_server
from ss_stylegan.data.synthetic import make_synthetic_datastore, make_synthetic_study

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    root = tmp_path_factory.mktemp("loop")
    studies = root / "studies"
    make_synthetic_datastore(studies, n_studies=3, n_slices=12, size=32, random_state=0)
    make_synthetic_study(root / "outside.nii.gz", n_slices=8, size=32, random_state=7)
    with start_server(studies, TINY_CONF, log_path=root / "server.log") as srv:
        yield srv


def test_before_training_a_clear_answer(server: RunningServer) -> None:
    info = server.get_json("/info/")
    block = info["ss_stylegan"]
    assert block["state"] == "untrained"
    assert block["classes"] == ["normal", "lesion"]
    assert block["n_embedded"] == 0 and block["n_labelled"] == 0
    assert set(info["trainers"]) == {"ss_stylegan"}
    assert set(info["strategies"]) == {"fps", "random"}
    assert info["models"]["classify"]["type"] == "classification"

    status, body = server.request("POST", "/activelearning/fps", {})
    assert status == 409 and "not trained" in body["detail"]
    status, body = server.request("POST", "/infer/classify?image=study_00", {})
    assert status == 409, body
    status, body = server.request("GET", "/slicemap/")
    assert status == 409


def test_train_refuses_a_second_request_and_reports_progress(server: RunningServer) -> None:
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


def test_suggestions_are_distinct_per_client(server: RunningServer) -> None:
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
    jobs = [("study_00", s, "normal", "alice") for s in range(0, 6)] + \
           [("study_01", s, "lesion", "bob") for s in range(0, 6)]
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
    on_disk = server.studies / "labels" / "slice_class"
    assert sorted(p.name for p in on_disk.glob("*.json")) == ["study_00.json", "study_01.json"]
    image_info = server.get_json("/datastore/image/info?image=study_01")
    assert image_info["slice_class"] == {"lesion": 6}

    status, text = server.request("GET", "/slicelabels/export.csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert status == 200 and len(rows) == 12
    assert set(rows[0]) == {"image", "slice", "class", "user", "timestamp"}


def test_suggestions_skip_labelled_slices(server: RunningServer) -> None:
    status, ans = server.request("POST", "/activelearning/fps", {"count": 20, "client_id": "dave"})
    assert status == 200
    labelled = {(r["image"], r["slice"]) for r in server.get_json("/slicelabels/")["labels"]}
    assert not {(s["id"], s["slice"]) for s in ans["suggestions"]} & labelled


def test_classify_datastore_image(server: RunningServer) -> None:
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


def test_classify_uploaded_study(server: RunningServer) -> None:
    path = server.studies.parent / "outside.nii.gz"
    with open(path, "rb") as fh:
        resp = requests.post(f"{server.url}/infer/classify", files={"file": ("outside.nii.gz", fh)},
                             data={"params": "{}"}, timeout=120)
    assert resp.status_code == 200, resp.text
    ans = resp.json()
    assert ans["image"] is None and ans["n_slices"] == 8
    assert 1 <= len(ans["slices"]) <= 8 and sum(ans["summary"].values()) == len(ans["slices"])

    resp = requests.post(f"{server.url}/infer/classify", files={"file": ("junk.nii.gz", b"not an image")},
                         data={"params": "{}"}, timeout=60)
    assert resp.status_code == 422 and "cannot read" in resp.json()["detail"]


def test_slicemap(server: RunningServer) -> None:
    pts = server.get_json("/slicemap/")["points"]
    assert len(pts["x"]) == len(pts["y"]) == len(pts["image"]) == 36
    assert sum(1 for v in pts["label"] if v) == 12
    assert set(pts["prediction"]) <= {"normal", "lesion"} and None not in pts["prediction"]


def test_new_study_embedded_without_retraining(server: RunningServer) -> None:
    make_synthetic_study(server.studies / "late_study.nii.gz", n_slices=10, size=32, random_state=11)
    version = server.get_json("/info/")["ss_stylegan"]["model_version"]
    status, ans = server.request("POST", "/infer/classify?image=late_study", {})  # waits for the refresh
    assert status == 200, ans
    assert ans["n_slices"] == 10 and len(ans["slices"]) >= 1
    block = server.get_json("/info/")["ss_stylegan"]
    assert block["n_images_embedded"] == 4 and block["model_version"] == version
    (server.studies / "late_study.nii.gz").unlink()  # keep the rest of the module's counts simple


def test_restart_keeps_labels_and_map(server: RunningServer) -> None:
    before = server.get_json("/slicelabels/")["labels"]
    server.restart(kill=True)
    assert server.get_json("/slicelabels/")["labels"] == before
    block = server.get_json("/info/")["ss_stylegan"]
    assert block["state"] == "ready" and block["n_labelled"] == 12


def test_done_when_everything_is_labelled(server: RunningServer) -> None:
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


def test_workspace_is_not_a_study(server: RunningServer) -> None:
    block = server.get_json("/info/")["ss_stylegan"]
    assert block["errors"] == {}
    assert (server.studies / ".ss_stylegan" / "slice_map.npz").exists()
