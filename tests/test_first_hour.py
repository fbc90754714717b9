"""What a new user trips over in the first hour (issue "The first hour"), each replayed as the user met it, against
a real server: a studies folder that does not exist, a bad setting, hints and missing fields in errors, world
coordinates and the settings a training answer echoes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from server_harness import TINY_CONF, RunningServer, start_server
from ss_stylegan.data.synthetic import make_synthetic_datastore

REPO = Path(__file__).resolve().parent.parent


def _start_server_directly(studies: Path, *conf: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    """``monailabel start_server`` as a user types it, with stdout and stderr kept apart."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "lib"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    command = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(REPO / "monailabel_app"),
               "--studies", str(studies), "--host", "127.0.0.1", "--port", "0"]
    for pair in conf:
        command += ["--conf", *pair.split("=", 1)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=str(studies.parent))


def test_a_studies_folder_that_does_not_exist_stops_the_server_in_one_line(tmp_path: Path) -> None:
    typo = tmp_path / "studeis"
    run = _start_server_directly(typo)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout
    assert run.stderr.rstrip().splitlines()[-1] == (
        f"SS-StyleGAN Label cannot start: the studies folder {typo} does not exist (it was created empty just now "
        "by monailabel start_server): check the path, or add --conf create_studies true to start on a new empty "
        "folder")
    assert not typo.exists()   # MONAI Label's placeholder is gone again


def test_a_new_studies_folder_needs_the_explicit_setting(tmp_path: Path) -> None:
    with start_server(tmp_path / "new_studies", {**TINY_CONF, "create_studies": "true"},
                      log_path=tmp_path / "server.log") as server:
        info = server.get_json("/info/")
        assert info["ss_stylegan"]["state"] == "untrained" and info["datastore"]["total"] == 0, info
    assert (tmp_path / "new_studies").is_dir()


@pytest.mark.parametrize(("conf", "message"), [
    ("clases=normal,lesion", "unknown --conf setting(s) ['clases']"),
    ("window=lungs", "unknown window 'lungs'; valid windows are ['auto', 'percentile', 'lung', 'abdomen', "
                     "'soft_tissue', 'mediastinum', 'brain', 'bone'], or centre:width in HU such as 40:400"),
])
def test_a_bad_setting_stops_the_server_with_its_message_alone(tmp_path: Path, conf: str, message: str) -> None:
    make_synthetic_datastore(tmp_path / "studies", n_studies=1, n_slices=4, size=32, random_state=0)
    run = _start_server_directly(tmp_path / "studies", conf)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout
    last = run.stderr.rstrip().splitlines()[-1]
    assert last.startswith("SS-StyleGAN Label cannot start: ") and message in last, last


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, trained_template) -> RunningServer:
    from trained_datastore import copy_trained_datastore

    root = tmp_path_factory.mktemp("first_hour")
    studies = copy_trained_datastore(trained_template(3), root / "studies")
    with start_server(studies, TINY_CONF, log_path=root / "server.log") as srv:
        yield srv


def test_a_missing_query_field_is_one_sentence_like_every_other_422(server: RunningServer) -> None:
    status, answer = server.request("DELETE", "/slicelabels/?image=study_00")
    assert status == 422 and answer == {"detail": "query parameter 'slice' is required"}, answer
    status, answer = server.request("GET", "/slicemap/slice")
    assert status == 422 and answer["detail"] == ("query parameter 'image' is required; query parameter 'slice' "
                                                  "is required"), answer


def test_the_hint_of_an_unknown_image_names_a_request_that_lists_images(server: RunningServer) -> None:
    status, answer = server.request("PUT", "/slicelabels/", {"image": "study_99", "slice": 0, "class": "normal"})
    assert status == 404 and "GET /datastore/?output=all" in answer["detail"], answer
    listing = server.get_json("/datastore/?output=all")
    assert "study_00" in listing["objects"]      # the request the hint names does list the images


def test_labelled_studies_count_as_completed(server: RunningServer) -> None:
    before = server.get_json("/datastore/")["completed"]
    status, _ = server.request("PUT", "/slicelabels/", {"image": "study_01", "slice": 2, "class": "lesion"})
    assert status == 200
    try:
        assert server.get_json("/datastore/")["completed"] == before + 1
    finally:
        server.request("DELETE", "/slicelabels/?image=study_01&slice=2")


def test_world_coordinates_are_rounded_to_what_the_geometry_holds(server: RunningServer) -> None:
    points = server.get_json("/slicemap/")
    worlds = [v for point in points["points"]["world"] for v in point]
    assert worlds and all(round(v, 3) == v for v in worlds)
    status, suggestion = server.request("POST", "/activelearning/random", {"client_id": "first-hour"})
    assert status == 200 and all(round(v, 3) == v for v in suggestion["world"]), suggestion
    server.request("DELETE", "/activelearning/pending?client_id=first-hour")


def test_a_training_answer_echoes_the_settings_in_effect(tmp_path: Path) -> None:
    make_synthetic_datastore(tmp_path / "studies", n_studies=1, n_slices=6, size=32, random_state=0)
    with start_server(tmp_path / "studies", TINY_CONF, log_path=tmp_path / "server.log") as server:
        status, task = server.request("POST", "/train/ss_stylegan", {"steps": 2})
        assert status == 200, task
        request = task["request"]
        assert request["gpus"] == "none (one device)" and request["device"] == "cpu", request
        assert request["steps"] == 2 and request["kimg"] is None, request   # steps decide the length, not kimg
        assert request["batch_size"] == int(TINY_CONF["batch_size"]), request
        server.wait_for_training(120)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_each_map_version_has_pictures_a_person_can_read_linked_from_info(server: RunningServer) -> None:
    links = server.get_json("/info/")["ss_stylegan"]["pictures"]
    assert set(links) == {"map", "samples", "reconstructions"}
    sizes = {}
    for name, url in links.items():
        status, data = server.request_bytes("GET", url)
        assert status == 200, (url, data[:200])
        sizes[name] = _png_size(data)
    assert sizes["map"][0] >= 1000 and sizes["map"][1] >= 500
    assert sizes["reconstructions"][1] >= 2 * 128 and sizes["samples"][0] >= 8 * 128
    status, answer = server.request("GET", "/slicemap/pictures/passwd")
    assert status == 404 and "samples.png" in answer["detail"]


def test_the_training_answer_says_whether_it_is_learning(server: RunningServer) -> None:
    learning = server.get_json("/train/")["ss_stylegan"]["learning"]
    assert len(learning["maps"]) == 1 and learning["maps"][0]["reconstruction_error"] > 0
    assert learning["summary"].startswith("reconstruction error ") and "at the first map" in learning["summary"]


def test_neighbour_stability_is_one_for_the_same_map_and_low_for_a_shuffled_one() -> None:
    import dataclasses

    import numpy as np

    from ss_stylegan.maps.lifecycle import neighbour_stability
    from ss_stylegan.maps.slice_map import SliceMap

    rng = np.random.default_rng(0)
    n = 500
    before = SliceMap(image_ids=["a"] * n, slices=range(n), positions=np.zeros((n, 3)), w=rng.normal(size=(n, 4)),
                      xy=rng.normal(size=(n, 2)), model_version="m1")
    assert neighbour_stability(before, dataclasses.replace(before, model_version="m2")) == 1.0
    shuffled = dataclasses.replace(before, xy=before.xy[rng.permutation(n)])
    assert neighbour_stability(before, shuffled) < 0.2
    assert neighbour_stability(None, before) is None
    assert neighbour_stability(before, dataclasses.replace(before, slices=np.arange(n) + 1)) is None


def test_a_large_map_is_drawn_from_a_sample_that_keeps_every_labelled_slice() -> None:
    import numpy as np

    from ss_stylegan.maps.pictures import drawn_rows, map_picture

    labelled = np.zeros(5000, dtype=bool)
    labelled[[7, 4321]] = True
    rows = drawn_rows(labelled, max_drawn=1000)
    assert 1000 <= len(rows) <= 1002 and {7, 4321} <= set(rows.tolist()) and np.all(np.diff(rows) > 0)
    assert np.array_equal(drawn_rows(labelled, max_drawn=1000), rows)          # the same sample each time
    assert np.array_equal(drawn_rows(labelled[:800], max_drawn=1000), np.arange(800))
    xy = np.random.default_rng(0).normal(size=(60_000, 2))
    labels = [None] * 60_000
    labels[59_999] = "lesion"
    assert _png_size(map_picture(xy, labels, None, ["normal", "lesion"], "a large map")) == (1200, 600)
