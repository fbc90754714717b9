"""Studies that change on disk while the server runs, against a real server over a trained tiny datastore.

A study touched (same bytes) keeps everything. A study replaced by another of the same name, or cut short,
or deleted, is found by the server on its own (stamp, then content hash): its old points leave the map and
the 1-NN reference, a readable replacement is read again, an unreadable one is reported in ``/info/``, and
the labels that no longer fit are flagged with the reason in ``/info/`` and ``/slicelabels/`` (never moved
or dropped) until they are stored again or removed.

Every test has a server of its own over its own copy of a trained datastore of 4 studies (made once per
session, ``trained_studies`` in ``conftest.py``) with the same 5 labels, so the tests run alone and in any order.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from server_harness import TINY_CONF, RunningServer, start_server

from ss_stylegan.data.synthetic import make_synthetic_study

pytestmark = pytest.mark.server

CONF = {**TINY_CONF, "suggestion_cap": "100"}


@pytest.fixture
def server(tmp_path: Path, trained_studies: Callable[..., Path]) -> Iterator[RunningServer]:
    with start_server(trained_studies(n_studies=4), CONF, log_path=tmp_path / "server.log") as srv:
        for image, s, cls in [("study_00", 2, "normal"), ("study_00", 10, "lesion"), ("study_01", 3, "normal"),
                              ("study_02", 4, "lesion"), ("study_03", 5, "normal")]:
            status, body = srv.request("PUT", "/slicelabels/", {"image": image, "slice": s, "class": cls})
            assert status == 200, body
        yield srv


def _until(server: RunningServer, check: Callable[[], Any], what: str, timeout_s: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s\n{server.log()}"
        time.sleep(0.2)


def _flags(server: RunningServer) -> dict[tuple[str, int], str]:
    return {(r["image"], r["slice"]): r["flag"] for r in server.get_json("/slicelabels/")["labels"] if "flag" in r}


def _map_images(server: RunningServer) -> dict[str, int]:
    images: dict[str, int] = {}
    for image in server.get_json("/slicemap/")["points"]["image"]:
        images[image] = images.get(image, 0) + 1
    return images


def test_a_touched_study_keeps_its_points_and_labels(server: RunningServer) -> None:
    path = server.studies / "study_03.nii.gz"
    before = _map_images(server)
    os.utime(path, ns=(time.time_ns(), time.time_ns()))

    def classified() -> tuple[int, Any] | None:
        # held back (409, "changed on disk") until the next sweep, started by a request every few seconds,
        # has hashed the touched file: the same content only records its new stamp
        answer = server.request("POST", "/infer/classify?image=study_03", {})
        return answer if answer[0] != 409 else None

    status, ans = _until(server, classified, "classifying the touched study")
    assert status == 200 and ans["n_slices"] == 12, ans
    assert _flags(server) == {} and _map_images(server) == before


def test_a_replaced_study_is_read_again_and_its_labels_flagged(server: RunningServer) -> None:
    version = server.get_json("/info/")["ss_stylegan"]["model_version"]
    path = server.studies / "study_00.nii.gz"
    replacement = server.studies.parent / "replacement.nii.gz"
    make_synthetic_study(replacement, n_slices=8, size=32, random_state=99)
    os.replace(replacement, path)  # another study under the same name, 8 slices instead of 12
    flags = _until(server, lambda: len(_flags(server)) == 2 and _flags(server), "flagging the replaced study")
    assert "now has 8 slice(s)" in flags[("study_00", 10)]
    assert "changed since this slice was labelled" in flags[("study_00", 2)]
    status, ans = _until(server, lambda: (r := server.request("POST", "/infer/classify?image=study_00", {}))[0]
                         != 409 and r, "re-reading the replaced study")  # 409 'being read again' until then
    assert status == 200 and ans["n_slices"] == 8 and all(s["slice"] < 8 for s in ans["slices"]), ans
    info = server.get_json("/info/")["ss_stylegan"]
    assert {(f["image"], f["slice"]) for f in info["flagged_labels"]} == {("study_00", 2), ("study_00", 10)}
    assert info["n_flagged"] == 2 and info["model_version"] == version  # placed into the same map, not refitted
    assert all(s["neighbour"]["image"] != "study_00" for s in ans["slices"])  # flagged labels are no reference
    assert max(s for i, s in zip(*(server.get_json("/slicemap/")["points"][k] for k in ("image", "slice")))
               if i == "study_00") < 8
    labels = {(r["image"], r["slice"]): r["class"] for r in server.get_json("/slicelabels/")["labels"]}
    assert labels[("study_00", 2)] == "normal" and labels[("study_00", 10)] == "lesion"  # kept, never moved

    status, body = server.request("PUT", "/slicelabels/", {"image": "study_00", "slice": 10, "class": "lesion"})
    assert status == 422 and "0..7" in body["detail"]
    status, _ = server.request("PUT", "/slicelabels/", {"image": "study_00", "slice": 2, "class": "normal"})
    assert status == 200  # stored again: confirmed for the new file
    assert set(_flags(server)) == {("study_00", 10)}
    assert server.request("DELETE", "/slicelabels/?image=study_00&slice=10")[0] == 200
    assert _flags(server) == {}


def test_a_study_cut_short_is_reported_and_never_used(server: RunningServer) -> None:
    path = server.studies / "study_01.nii.gz"
    data = path.read_bytes()
    with open(path, "r+b") as fh:  # truncated in place: the folder itself does not change
        fh.truncate(len(data) // 2)
    errors = _until(server, lambda: server.get_json("/info/")["ss_stylegan"]["errors"].get("study_01"),
                    "reporting the truncated study")
    assert "cannot read" in errors and str(server.studies) not in errors
    assert "study_01" not in _map_images(server)
    status, ans = server.request("POST", "/activelearning/fps", {"count": 100, "client_id": "t"})
    assert status == 200 and "study_01" not in {s["id"] for s in ans["suggestions"]}
    status, body = server.request("PUT", "/slicelabels/", {"image": "study_01", "slice": 1, "class": "normal"})
    assert status == 422 and "cannot read" in body["detail"]
    status, body = server.request("POST", "/infer/classify?image=study_01", {})
    assert status == 422 and "cannot read" in body["detail"]
    assert "cannot be read now" in _flags(server)[("study_01", 3)]
    path.write_bytes(data)  # put back whole: read again, the label fits again
    _until(server, lambda: "study_01" in _map_images(server) and not _flags(server), "reading the restored study")


def test_a_deleted_study_leaves_the_map_and_the_1nn_reference(server: RunningServer) -> None:
    assert server.request("DELETE", "/slicelabels/?image=study_00&slice=10")[0] == 200  # study_02's is the only lesion
    status, ans = server.request("POST", "/infer/classify?image=study_03", {})
    assert status == 200 and "lesion" in ans["labelled_classes"]  # study_02's lesion label is a reference
    (server.studies / "study_02.nii.gz").unlink()
    _until(server, lambda: "study_02" not in _map_images(server), "dropping the deleted study from the map")
    assert "no longer in the studies folder" in _flags(server)[("study_02", 4)]
    status, ans = server.request("POST", "/infer/classify?image=study_03", {})
    assert status == 200 and ans["labelled_classes"] == ["normal"], ans
    assert all(s["neighbour"]["image"] != "study_02" for s in ans["slices"])
    # the points of a deleted study are hidden at once; the map without them is published in the background
    info = _until(server, lambda: (block := server.get_json("/info/")["ss_stylegan"])["n_images_embedded"] == 3
                  and block, "publishing the map without the deleted study")
    assert info["n_labelled"] == 4  # the label is kept, flagged
    assert server.request("POST", "/infer/classify?image=study_02", {})[0] == 404


def test_flags_survive_a_restart(server: RunningServer) -> None:
    (server.studies / "study_02.nii.gz").unlink()  # its label (slice 4) is flagged, and kept
    before = _until(server, lambda: _flags(server), "flagging the label of the deleted study")
    assert "no longer in the studies folder" in before[("study_02", 4)]
    server.restart(kill=True)
    assert _flags(server) == before and Path(server.studies / "labels" / "slice_class").is_dir()
