"""Hostile and careless requests against a real server (auth off; auth is in ``test_app_auth.py``).

One server over a copy of the trained tiny datastore (``trained_template`` in ``conftest.py``), with small
upload limits and a suggestion cap of 4, its temp folder (``TMPDIR``) inside the test folder so leftover temp
files show. The tests run alone and in any order: each labels studies and slices of its own and checks only
those (study_00 stays unlabelled, study_01 is the label-tag test's, the others label study_02 or uploads);
the test that labels every slice has a server of its own. Everything is checked on disk as
well as in the answers: nothing may be written outside the studies folder, the app's label files may change
only through ``/slicelabels/``, and no answer may carry a server path. The last tests restart the server:
with classes that would orphan labels (refused), and after ``kill -9`` during 8 concurrent label writers
(nothing acknowledged is lost).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from server_harness import TINY_CONF, RunningServer, ServerStartError, start_server
from trained_datastore import copy_trained_datastore

pytestmark = pytest.mark.server

CONF = {**TINY_CONF, "suggestion_cap": "4", "max_upload_mb": "1", "max_upload_unpacked_mb": "4",
        "max_upload_voxels": "2000000"}


def _nifti_bytes(shape: tuple[int, ...] = (16, 16, 4), dtype: type = np.int16, fill: float = 0) -> bytes:
    """A gzip NIfTI study; ``fill`` > 0 gives a bright square so it has foreground slices."""
    data = np.zeros(shape, dtype)
    if fill:
        data[4:12, 4:12] = fill
    return gzip.compress(nib.Nifti1Image(data, np.eye(4)).to_bytes())


def _files_outside(root: Path, studies: Path) -> set[str]:
    """Every path under ``root`` that is not in the studies folder, the server's temp folder or a log."""
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if studies not in p.parents and p != studies and "tmp" not in p.relative_to(root).parts
            and p.suffix != ".log"}


def _start(root: Path, template: Path) -> RunningServer:
    (root / "tmp").mkdir()
    studies = copy_trained_datastore(template, root / "studies")
    return start_server(studies, CONF, log_path=root / "server.log", env={"TMPDIR": str(root / "tmp")})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, trained_template: Callable[[int], Path]) -> RunningServer:
    with _start(tmp_path_factory.mktemp("security"), trained_template(3)) as srv:
        yield srv


@pytest.fixture
def own_server(tmp_path: Path, trained_template: Callable[[int], Path]) -> RunningServer:
    """A server of the test's own, for a test that labels or reserves every slice."""
    with _start(tmp_path, trained_template(3)) as srv:
        yield srv


def _upload(server: RunningServer, content: bytes, filename: str, path: str = "/datastore/image",
            **query: str) -> requests.Response:
    field = "label" if path == "/datastore/label" else "file"
    return requests.request("POST" if path == "/infer/classify" else "PUT", server.url + path, params=query,
                            files={field: (filename, content)}, data={"params": "{}"}, timeout=60)


def test_no_id_tag_or_path_leaves_the_studies_folder(server: RunningServer) -> None:
    root = server.studies.parent
    before = _files_outside(root, server.studies)
    attempts = [
        _upload(server, _nifti_bytes(), "x.nii.gz", image="../escaped"),
        _upload(server, _nifti_bytes(), "x.nii.gz", image=str(root / "absolute")),
        _upload(server, _nifti_bytes(), "x.nii.gz", image=".."),
        _upload(server, _nifti_bytes(), "x.nii.gz", image=".ss_stylegan"),
        _upload(server, _nifti_bytes(), "x.nii.gz", image="a" * 300),
        _upload(server, _nifti_bytes(), "x.nii.gz", image="nul\x00byte"),
        _upload(server, _nifti_bytes(), "../../escaped_name.nii.gz"),  # only the name is used: lands inside
        _upload(server, _nifti_bytes(), "study_00.nii.gz", path="/datastore/label", image="study_00", tag="../.."),
        _upload(server, _nifti_bytes(), "study_00.nii.gz", path="/datastore/label", image="study_00",
                tag=str(root)),
        _upload(server, _nifti_bytes(), "x.nii.gz", path="/datastore/label", image="../study_00", tag="final"),
    ]
    statuses = [a.status_code for a in attempts]
    assert statuses == [422] * 6 + [200] + [422] * 3, [(a.status_code, a.text[:100]) for a in attempts]
    assert (server.studies / "escaped_name.nii.gz").exists()
    for method, path in [("GET", "/datastore/image?image=../studies/study_00"),
                         ("GET", f"/datastore/image?image={server.studies / 'study_00'}"),
                         ("HEAD", "/datastore/image?image=.."),
                         ("GET", "/datastore/image/info?image=%00"),
                         ("GET", "/datastore/label?label=study_00&tag=../../studies"),
                         ("GET", "/datastore/label/info?label=../x&tag=final"),
                         ("DELETE", "/datastore/image?id=../studies/study_00"),
                         ("DELETE", "/datastore/label?id=study_00&tag=../labels")]:
        status, body = server.request(method, path)
        assert status in (404, 422), (method, path, status, body)
    assert _files_outside(root, server.studies) == before
    assert (server.studies / "study_00.nii.gz").exists()


def test_the_app_label_tag_changes_only_through_the_label_api(server: RunningServer) -> None:
    for s in (1, 2):
        status, _ = server.request("PUT", "/slicelabels/", {"image": "study_01", "slice": s, "class": "lesion"})
        assert status == 200
    label_dir = server.studies / "labels" / "slice_class"
    files = {p.name: p.read_bytes() for p in label_dir.iterdir()}
    resp = _upload(server, b"[]", "study_01.json", path="/datastore/label", image="study_01", tag="slice_class")
    assert resp.status_code == 422 and "PUT / DELETE /slicelabels/" in resp.json()["detail"]
    for method, path, form in [("DELETE", "/datastore/label?id=study_01&tag=slice_class", None),
                               ("PUT", "/datastore/label/info?label=study_01&tag=slice_class", {"info": "{}"}),
                               ("PUT", "/datastore/image/info?image=study_01",
                                {"info": json.dumps({"slice_class": {"normal": 99}})})]:
        resp = requests.request(method, server.url + path, data=form, timeout=30)
        assert resp.status_code == 422, (path, resp.text)
    assert {p.name: p.read_bytes() for p in label_dir.iterdir()} == files
    assert server.get_json("/datastore/image/info?image=study_01")["slice_class"] == {"lesion": 2}
    server.restart(kill=True)
    assert {(r["slice"], r["class"]) for r in server.get_json("/slicelabels/?image=study_01")["labels"]} == {
        (1, "lesion"), (2, "lesion")}


@pytest.mark.parametrize(
    ("method", "path", "raw", "field"),
    [
        ("PUT", "/slicelabels/", '{"image": "study_00", "slice": NaN, "class": "normal"}', "slice"),
        ("PUT", "/slicelabels/", '{"image": "study_00", "slice": 1, "class": "normal", "user": NaN}', "user"),
        ("PUT", "/slicelabels/", '{"image": Infinity, "slice": 1, "class": "normal"}', "image"),
        ("PUT", "/slicelabels/", '{"image": "study_00", "slice": 1, "class": -Infinity}', "class"),
        ("POST", "/train/ss_stylegan", '{"kimg": NaN}', "kimg"),
        ("POST", "/train/", '{"ss_stylegan": {"steps": Infinity}}', "ss_stylegan.steps"),
        ("POST", "/activelearning/fps", '{"count": NaN}', "count"),
        ("POST", "/batch/infer/classify", '{"max_workers": NaN}', "max_workers"),
    ],
)
def test_nan_and_infinity_are_422_naming_the_field(server: RunningServer, method: str, path: str, raw: str,
                                                   field: str) -> None:
    status, body = server.request(method, path, raw=raw.encode())
    assert status == 422 and body["detail"].startswith(field), body
    assert server.request("GET", "/train/")[1]["status"] in ("NONE", "DONE")  # nothing was started


def test_values_of_the_wrong_kind_are_422(server: RunningServer) -> None:
    ok = {"image": "study_00", "slice": 3, "class": "normal", "user": "ann"}
    for change, field in [({"slice": True}, "slice"), ({"slice": "3"}, "slice"), ({"slice": 3.0}, "slice"),
                          ({"user": "u" * (1 << 20)}, "user"), ({"user": "a\nb"}, "user"),
                          ({"user": "nul\x00"}, "user"), ({"class": ["normal"]}, "class"),
                          ({"colour": "red"}, "colour"), ({"image": "s" * 300}, "image")]:
        status, body = server.request("PUT", "/slicelabels/", {**ok, **change})
        assert status == 422 and body["detail"].startswith(field), (change, body)
    status, body = server.request("PUT", "/slicelabels/", {"slice": 3, "class": "normal"})
    assert status == 422 and body["detail"] == "image: is required"
    assert server.request("DELETE", "/slicelabels/?image=study_00&slice=true")[0] == 422
    status, body = server.request("POST", "/activelearning/fps", {"count": True})
    assert status == 422 and "count" in body["detail"]
    status, body = server.request("POST", "/activelearning/fps", {"client_id": "c" * 500})
    assert status == 422 and "client_id" in body["detail"]
    assert server.get_json("/slicelabels/?image=study_00")["labels"] == []  # none of these stored anything


def test_csv_export_cells_never_start_a_formula(server: RunningServer) -> None:
    assert _upload(server, _nifti_bytes(fill=500), "x.nii.gz", image="=HYPERLINK(1)").status_code == 200
    for image, user in (("=HYPERLINK(1)", "@SUM(A1)"), ("study_02", "=cmd|' -C calc'!A0"), ("study_02", "-1+2")):
        status, body = server.request("PUT", "/slicelabels/", {"image": image, "slice": 0 if image[0] == "=" else 5,
                                                               "class": "normal", "user": user})
        assert status == 200, body
    status, text = server.request("GET", "/slicelabels/export.csv")
    cells = [c for row in csv.reader(io.StringIO(text)) for c in row]
    assert status == 200 and "'=HYPERLINK(1)" in cells and "'@SUM(A1)" in cells
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@")]
    assert {r["user"] for r in server.get_json("/slicelabels/")["labels"]} >= {"@SUM(A1)", "-1+2"}  # stored as sent


def test_uploads_are_bounded_and_leave_no_temp_file(server: RunningServer) -> None:
    temp = server.studies.parent / "tmp"
    temp_before = set(temp.iterdir())  # MONAI Label writes its logging config there at each start
    too_big = _upload(server, np.random.default_rng(0).bytes(3 << 20), "big.nii.gz")
    assert too_big.status_code == 413 and "max_upload_mb" in too_big.json()["detail"]

    def chunks() -> object:  # no Content-Length: the cap applies while the body arrives
        yield (b'--zz\r\nContent-Disposition: form-data; name="file"; filename="big.nii.gz"\r\n'
               b"Content-Type: application/octet-stream\r\n\r\n")
        for _ in range(40):
            yield b"x" * 65536
    chunked = requests.put(server.url + "/datastore/image", data=chunks(), timeout=60,
                           headers={"Content-Type": "multipart/form-data; boundary=zz"})
    assert chunked.status_code == 413, chunked.text
    unpacked = _upload(server, _nifti_bytes((128, 128, 100), np.float64), "zeros.nii.gz")  # 13 MB unpacked
    assert unpacked.status_code == 413 and "max_upload_unpacked_mb" in unpacked.json()["detail"]
    header = bytearray(gzip.decompress(_nifti_bytes())[:352])
    header[42:48] = np.asarray([1024, 1024, 1024], "<i2").tobytes()
    voxels = _upload(server, gzip.compress(bytes(header)), "bomb.nii.gz")
    assert voxels.status_code == 413 and "max_upload_voxels" in voxels.json()["detail"]
    classify = _upload(server, gzip.compress(bytes(header)), "bomb.nii.gz", path="/infer/classify")
    assert classify.status_code == 413

    elsewhere = server.studies.parent / "elsewhere.raw"
    elsewhere.write_bytes(np.zeros((8, 8, 2), np.int16).tobytes())
    mha = (f"ObjectType = Image\nNDims = 3\nDimSize = 8 8 2\nElementType = MET_SHORT\n"
           f"ElementDataFile = {elsewhere}\n").encode()
    for name, content in [("names.mha", mha), ("names.nrrd", b"NRRD0004\ntype: short\ndimension: 3\nsizes: 8 8 2\n"
                                                            b"encoding: raw\ndata file: " + str(elsewhere).encode()
                                                            + b"\n\n"),
                          ("detached.nhdr", b"NRRD0004\n"), ("detached.mhd", mha), ("archive.zip", b"PK")]:
        for path in ("/datastore/image", "/infer/classify"):
            resp = _upload(server, content, name, path=path)
            assert resp.status_code == 422, (name, path, resp.text)
    assert not [p for p in server.studies.iterdir() if p.name.startswith(("names", "detached", "archive"))]

    good = _upload(server, _nifti_bytes(fill=300), "uploaded study.nii.gz")
    assert good.status_code == 200 and good.json() == {"image": "uploaded_study"}
    assert (server.studies / "uploaded_study.nii.gz").exists()
    info = server.get_json("/datastore/image/info?image=uploaded_study")
    assert "path" not in info and info["name"] == "uploaded_study.nii.gz"
    assert set(temp.iterdir()) == temp_before


def test_batch_infer_takes_datastore_ids_only(server: RunningServer) -> None:
    outside = server.studies.parent / "outside.nii.gz"
    outside.write_bytes(_nifti_bytes(fill=100))
    for images, status in [([str(outside)], 422), (["../outside"], 422), (["no_such_study"], 404),
                           ("everything", 422), ({"a": 1}, 422)]:
        got, body = server.request("POST", "/batch/infer/classify", {"images": images})
        assert got == status, (images, body)
    got, body = server.request("POST", "/batch/infer/classify", {"label_tag": "slice_class"})
    assert got == 422, body
    assert server.request("POST", "/batch/infer/no_model", {})[0] == 404
    assert server.request("PUT", "/slicelabels/", {"image": "study_02", "slice": 2, "class": "lesion"})[0] == 200
    got, result = server.request("POST", "/batch/infer/classify?run_sync=true", {"images": ["study_00"]})
    assert got == 200 and result["study_00"]["params"]["image"] == "study_00", result
    assert len(result["study_00"]["params"]["slices"]) >= 1


def test_unknown_names_are_4xx_never_500(server: RunningServer) -> None:
    cases = [("POST", "/activelearning/no_such_strategy", 404), ("POST", "/infer/no_such_model", 404),
             ("POST", "/infer/wsi/x", 404), ("POST", "/infer/wsi_v2/x", 404), ("POST", "/train/no_such", 404),
             ("POST", "/scoring/no_such", 404), ("PUT", "/model/classify", 404), ("PUT", "/session/", 406),
             ("GET", "/session/abc", 406), ("GET", "/datastore/?output=everything", 422),
             ("GET", "/datastore/image?image=" + "z" * 300, 422), ("GET", "/datastore/image?image=no_such", 404),
             ("POST", "/infer/classify?image=%00", 422), ("POST", "/infer/classify?image=no_such", 404)]
    for method, path, expected in cases:
        status, body = server.request(method, path, {} if method != "GET" else None)
        assert status == expected, (method, path, status, body)


def test_no_server_path_in_any_answer(server: RunningServer) -> None:
    (server.studies / "broken.nii.gz").write_bytes(b"\x1f\x8b" + b"cut short")
    answers = [
        requests.post(server.url + "/infer/classify", files={"file": ("junk.nii", b"\0" * 400)}, timeout=30).text,
        server.request("PUT", "/slicelabels/", {"image": "broken", "slice": 0, "class": "normal"})[1]["detail"],
        server.request("POST", "/infer/classify?image=broken", {})[1]["detail"],
        json.dumps(server.get_json("/info/")),
        json.dumps(server.get_json("/datastore/?output=train")),
        json.dumps(server.get_json("/datastore/?output=all")),
        json.dumps(server.get_json("/datastore/image/info?image=study_00")),
        json.dumps(server.get_json("/train/")),
        json.dumps(server.get_json("/slicelabels/")),
    ]
    assert "cannot read" in answers[1] and "broken.nii.gz" in answers[1]
    for text in answers:
        assert str(server.studies.parent) not in text and "/tmp/" not in text and "site-packages" not in text, text
    (server.studies / "broken.nii.gz").unlink()


def test_each_client_has_a_cap_on_reserved_suggestions(server: RunningServer) -> None:
    status, body = server.request("POST", "/activelearning/fps", {"count": 1000, "client_id": "greedy"})
    assert status == 422 and "suggestion_cap" in body["detail"]
    try:
        status, first = server.request("POST", "/activelearning/fps", {"count": 4, "client_id": "ann"})
        assert status == 200 and len(first["suggestions"]) == 4
        status, second = server.request("POST", "/activelearning/fps", {"count": 4, "client_id": "bob"})
        keys = lambda ans: {(s["id"], s["slice"]) for s in ans["suggestions"]}  # noqa: E731
        assert status == 200 and len(second["suggestions"]) == 4 and not keys(first) & keys(second)
    finally:  # the server is shared by the module's other tests: leave no slice reserved
        for client in ("ann", "bob"):
            server.request("DELETE", f"/activelearning/pending?client_id={client}")


def test_a_client_gives_back_its_suggestions_and_another_gets_them(own_server: RunningServer) -> None:
    # A server of its own: on the module's server, a study another test uploads can join the map while the
    # fillers below take the pool, and then "late" is offered its new slices.
    server = own_server
    keys = lambda ans: {(s["id"], s["slice"]) for s in ans["suggestions"]}  # noqa: E731
    release = lambda client: server.request("DELETE", f"/activelearning/pending?client_id={client}")  # noqa: E731
    status, mine = server.request("POST", "/activelearning/fps", {"count": 4, "client_id": "leaver"})
    assert status == 200 and len(mine["suggestions"]) == 4
    fillers: list[str] = []
    while True:  # other annotators take every other slice
        fillers.append(f"filler-{len(fillers)}")
        status, taken = server.request("POST", "/activelearning/fps", {"count": 4, "client_id": fillers[-1]})
        assert status == 200 and not keys(taken) & keys(mine)
        if len(taken["suggestions"]) < 4:
            break
    status, late = server.request("POST", "/activelearning/fps", {"count": 4, "client_id": "late"})
    assert status == 200 and late["done"] and "another annotator" in late["message"], late

    status, gone = release("leaver")
    assert status == 200 and gone["client_id"] == "leaver", gone
    assert {(r["image"], r["slice"]) for r in gone["released"]} == keys(mine)
    assert release("leaver")[1]["released"] == []  # nothing left to give back; not an error
    status, late = server.request("POST", "/activelearning/fps", {"count": 4, "client_id": "late"})
    assert status == 200 and keys(late) == keys(mine)  # offered now, not when the reservations expire
    status, body = server.request("DELETE", "/activelearning/pending?client_id=" + "c" * 500)
    assert status == 422 and "client_id" in body["detail"], body


def test_classes_that_would_orphan_labels_refuse_to_start(server: RunningServer) -> None:
    assert server.request("PUT", "/slicelabels/", {"image": "study_02", "slice": 7, "class": "lesion"})[0] == 200
    labels = server.get_json("/slicelabels/")["labels"]
    lesions = [r for r in labels if r["class"] == "lesion"]
    assert lesions
    server.stop()
    conf = {**CONF, "classes": "normal,tumour"}
    try:
        with pytest.raises(ServerStartError, match=rf"--conf classes normal,tumour: {len(lesions)} stored slice "
                                                   r"label\(s\) use class\(es\) \['lesion'\].*export the labels"):
            start_server(server.studies, conf, log_path=server.log_path, start_timeout_s=90).stop()
    finally:
        server.start()
    assert server.get_json("/slicelabels/")["labels"] == labels


def test_label_writes_survive_kill_9_with_8_writers(own_server: RunningServer) -> None:
    server = own_server
    acknowledged: dict[tuple[str, int], int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    writes = [0]

    def writer(w: int) -> None:  # each writer owns its slices: study w % 3, slices 4 * (w // 3) .. + 3
        image = f"study_0{w % 3}"
        session = requests.Session()
        for k in range(100000):
            if stop.is_set():
                return
            body = {"image": image, "slice": 4 * (w // 3) + k % 4, "class": ("normal", "lesion")[k % 2],
                    "user": str(k)}
            try:
                resp = session.put(server.url + "/slicelabels/", json=body, timeout=60)
            except requests.RequestException:
                return
            if resp.status_code == 200:
                with lock:
                    acknowledged[(image, body["slice"])] = k
                    writes[0] += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while writes[0] < 300 and time.monotonic() < deadline:  # writes in full flow
        threading.Event().wait(0.02)
    assert writes[0] >= 300, f"only {writes[0]} label writes answered 200 in 120 s\n{server.log()}"
    server.kill()
    stop.set()
    for t in threads:
        t.join()
    server.start()
    stored = {(r["image"], r["slice"]): int(r["user"]) for r in server.get_json("/slicelabels/")["labels"]
              if r["user"].isdigit()}
    lost = {key: k for key, k in acknowledged.items() if stored.get(key, -1) < k}
    assert not lost, f"{len(lost)} acknowledged label writes lost: {list(lost.items())[:5]}"
