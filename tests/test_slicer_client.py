"""Every clinician action of the Slicer module, through its Slicer-free package, against a real server.

One MONAI Label server (the SS-StyleGAN Label app, tiny model) runs on 127.0.0.1 over synthetic CT studies
for the whole module. The fixture records what the server says before training (readable refusals), then
starts training through the session and watches its progress until the model is ready.
"""

from __future__ import annotations

import csv
import io
import sys
import time
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from server_harness import free_port, start_server

from ss_stylegan.config import SliceConfig
from ss_stylegan.data.preprocess import model_ready_slice
from ss_stylegan.data.readers import read_volume
from ss_stylegan.data.synthetic import make_synthetic_datastore, make_synthetic_study

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "slicer_module" / "SSStyleGANLabel"))

from SSStyleGANLabelLib import (  # noqa: E402
    ClientConfigError,
    LabelSession,
    MapScene,
    ServerError,
    ServerUnreachableError,
    SessionError,
    SSGLClient,
    StudyFiles,
)
from SSStyleGANLabelLib.records import ModelState  # noqa: E402
from SSStyleGANLabelLib.session import CSV_COLUMNS  # noqa: E402

pytestmark = pytest.mark.server

N_STUDIES, N_SLICES, SIZE = 3, 8, 32
CONF = {"preset": "tiny", "resolution": "32", "kimg": "0.1", "batch_size": "8", "perplexity": "5"}
TRAIN_TIMEOUT_S = 300.0


def _capture(call):
    try:
        call()
    except ServerError as err:
        return err
    raise AssertionError("the server accepted a request it should refuse")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("slicer_client")
    studies = root / "studies"
    make_synthetic_datastore(studies, n_studies=N_STUDIES, n_slices=N_SLICES, size=SIZE, random_state=3)
    server = start_server(studies, conf=CONF, log_path=root / "server.log")
    try:
        client = SSGLClient(server.url, timeout_s=120)
        trainer = LabelSession(client, "trainer")
        untrained = trainer.connect()
        before = types.SimpleNamespace(
            state=untrained,
            suggest=_capture(lambda: client.suggest("fps")),
            classify=_capture(lambda: client.classify("study_00")),
            slice_png=_capture(lambda: client.slice_png("study_00", 0)),
        )
        trainer.start_training()
        second_start = _capture(lambda: client.start_training())
        fractions = []
        deadline = time.monotonic() + TRAIN_TIMEOUT_S
        while not trainer.training_finished():
            assert time.monotonic() < deadline, f"training did not finish in time\n{server.log()}"
            if trainer.state.progress_fraction is not None:
                fractions.append(trainer.state.progress_fraction)
            time.sleep(1.0)
        assert trainer.state.ready, f"training ended in state {trainer.state.state}\n{server.log()}"
        yield types.SimpleNamespace(server=server, client=client, root=root, studies=studies, before=before,
                                    second_start=second_start, fractions=fractions, trained=trainer.state)
    finally:
        server.stop()


@pytest.fixture
def session(lab) -> LabelSession:
    """Alice's session, connected to the server with no labels: labels another test left are removed first
    (removed after connecting, they would stay in the session's mirror of the labels)."""
    _clear_labels(lab.client)
    s = LabelSession(lab.client, "alice")
    s.connect()
    return s


def _clear_labels(client: SSGLClient) -> None:
    for record in client.labels():
        client.delete_label(record.image, record.slice)


# -- connection ----------------------------------------------------------------------------------------
def test_unreachable_server_says_so() -> None:
    port = free_port()
    client = SSGLClient(f"http://127.0.0.1:{port}", timeout_s=5)
    with pytest.raises(ServerUnreachableError) as info:
        client.info()
    assert str(info.value).startswith(f"cannot reach the server at http://127.0.0.1:{port}: is it running?")


def test_bad_settings_are_refused_before_any_request() -> None:
    with pytest.raises(ClientConfigError, match="http://127.0.0.1:8000"):
        SSGLClient("127.0.0.1:8000")
    with pytest.raises(ClientConfigError, match="user name"):
        SSGLClient("http://127.0.0.1:8000", password="secret")
    with pytest.raises(SessionError, match="user name"):
        LabelSession(SSGLClient("http://127.0.0.1:8000"), "  ")


def test_connect_shows_classes_model_state_and_key_bindings(lab, session: LabelSession) -> None:
    state = session.state
    assert state.classes == ("normal", "lesion")
    assert state.ready and state.model_version
    assert state.n_slices == state.n_embedded == N_STUDIES * N_SLICES
    assert "ss_stylegan" in state.trainers and {"fps", "random"} <= set(state.strategies)
    assert "classify" in state.classifiers
    assert session.shortcuts == {"1": "normal", "2": "lesion"}
    # the live map and how far its model trained, as the widget shows it
    assert state.has_map and state.live_map["model_version"] == state.model_version
    assert state.live_map["training"]["final"] is True and state.live_map["training"]["step"] >= 1
    assert state.map_summary().startswith(f"map {state.live_map['version']}: step ")
    assert "kimg" in state.map_summary() and "min of training" in state.map_summary()


def test_a_map_published_while_training_runs_is_usable_and_described() -> None:
    info = {"trainers": ["ss_stylegan"], "ss_stylegan": {
        "state": "training", "classes": ["a", "b"], "model_version": "step00000040-ab",
        "map": {"version": "v1", "model_version": "step00000040-ab",
                "training": {"step": 40, "kimg": 0.64, "minutes": 5.02, "final": False}}}}
    state = ModelState.from_info(info)
    assert state.training and not state.ready and state.has_map   # suggestions work during training
    assert state.map_summary() == ("map v1: step 40, 0.6 kimg, 5.0 min of training "
                                   "(training goes on; a better map follows)")
    before = ModelState.from_info({"ss_stylegan": {"state": "training", "classes": ["a", "b"], "map": None}})
    assert not before.has_map and "first one is published" in before.map_summary()


def test_credentials_work_with_a_server_without_authentication(lab) -> None:
    client = SSGLClient(lab.server.url, username="alice", password="any")
    assert client.auth_enabled is False
    assert client.login() is None  # MONAI Label answers a null token when auth is off: no header is sent
    assert client.info().ready


# -- training ------------------------------------------------------------------------------------------
def test_refusals_before_training_are_readable(lab) -> None:
    assert lab.before.state.state == "untrained"
    for err in (lab.before.suggest, lab.before.classify, lab.before.slice_png):
        assert err.status == 409
        assert "train" in err.detail.lower()
        assert f"(HTTP 409): {err.detail}" in str(err)


def test_training_progress_is_reported_until_ready(lab) -> None:
    assert lab.second_start.status in (409, 429)  # one training at a time
    assert lab.trained.ready and lab.trained.progress_fraction == 1.0
    assert all(0.0 <= f <= 1.0 for f in lab.fractions)
    assert lab.fractions == sorted(lab.fractions), "training progress went backwards"


# -- suggestions and labels ----------------------------------------------------------------------------
def test_next_suggestion_uses_the_queue_before_asking_again(lab) -> None:
    _clear_labels(lab.client)
    session = LabelSession(lab.client, "bob", batch_size=2)
    session.connect()
    first = session.next_suggestion()
    assert first is not None and first.suggestion is not None
    assert first.world is not None and len(first.world) == 3
    assert first.suggestion.position is not None
    assert len(session.queue) == 1  # the second of the batch waits in the queue
    queued = session.queue[0]
    second = session.next_suggestion()
    assert second.key == queued.key != first.key
    assert first.key in session.pending  # skipped, still highlighted
    third = session.next_suggestion()  # the queue is empty: a new batch from the server
    assert third.key not in {first.key, second.key}
    assert 0 <= third.slice < N_SLICES and third.image.startswith("study_")


def test_suggestions_not_labelled_are_given_back_for_another_user(lab) -> None:
    _clear_labels(lab.client)
    carol = LabelSession(lab.client, "carol", batch_size=3)
    carol.connect()
    shown = carol.next_suggestion()
    held = set(carol.pending)
    assert len(held) == 3 and shown.key in held
    dave = LabelSession(lab.client, "dave", batch_size=3)
    dave.connect()
    assert dave.next_suggestion().key not in held  # reserved for carol
    dave.release_pending()

    assert set(carol.release_pending()) == held
    assert carol.pending == [] and carol.current.key == shown.key and carol.current.suggestion is None
    erin = LabelSession(lab.client, "erin", batch_size=3)
    erin.connect()
    assert erin.next_suggestion().key == shown.key  # the farthest slice again, now that nobody holds it
    assert set(erin.pending) == held
    erin.release_pending()
    with pytest.raises(ClientConfigError, match="client_id is required"):
        lab.client.release_suggestions("")


def test_label_with_number_keys_then_go_back_and_relabel(lab, session: LabelSession) -> None:
    current = session.next_suggestion()
    record = session.label_key("2")
    assert (record.image, record.slice, record.class_name, record.user) == (*current.key, "lesion", "alice")
    assert current.key not in session.pending
    assert {(r.image, r.slice): r.class_name for r in lab.client.labels()} == {current.key: "lesion"}

    session.next_suggestion()
    back = session.go_to(*current.key)
    assert back.key == current.key and back.suggestion is None
    assert back.world is not None  # known from the suggestion, so the viewer can jump back
    session.label_current("normal")
    stored = lab.client.labels(current.key[0])
    assert [(r.slice, r.class_name) for r in stored] == [(current.slice, "normal")]
    assert session.class_at(*current.key) == ("normal", "label")
    assert [r.key for r in session.labelled_slices()] == [current.key]

    session.unlabel(*current.key)
    assert lab.client.labels() == [] and session.labels == {}


def test_wrong_labels_get_readable_errors(lab, session: LabelSession) -> None:
    with pytest.raises(ServerError) as unknown_class:
        lab.client.put_label("study_00", 1, "tumour", "alice")
    assert unknown_class.value.status == 422
    assert "normal" in unknown_class.value.detail and "lesion" in unknown_class.value.detail
    with pytest.raises(ServerError) as bad_slice:
        lab.client.put_label("study_00", 999, "normal", "alice")
    assert bad_slice.value.status == 422 and "999" in bad_slice.value.detail
    with pytest.raises(ServerError) as bad_image:
        lab.client.put_label("no_such_study", 0, "normal", "alice")
    assert bad_image.value.status == 404 and "no_such_study" in bad_image.value.detail
    with pytest.raises(SessionError, match="1 = normal, 2 = lesion"):
        session.label_key("7")
    with pytest.raises(SessionError, match="no slice is shown"):
        session.label_current("normal")


# -- map, classification, export -----------------------------------------------------------------------
def test_map_shows_labels_and_a_click_goes_to_the_slice(lab, session: LabelSession) -> None:
    session.label("study_01", 4, "lesion")
    points = session.refresh_map()
    assert len(points) == N_STUDIES * N_SLICES
    assert points.model_version == session.state.model_version
    index = points.index_of("study_01", 4)
    assert points.labels[index] == "lesion"
    assert sum(label is not None for label in points.labels) == 1

    scene = MapScene(points, session.classes, width=400, height=300)
    px, py = scene.to_pixels(points.xy[index : index + 1])[0]
    key = scene.pick(px, py)
    assert key == ("study_01", 4)
    current = session.go_to(*key)
    assert current.world is not None  # the server's world position of that slice

    session.label("study_02", 0, "normal")
    assert session.map.labels[points.index_of("study_02", 0)] == "normal"  # the mirror follows new labels


def test_map_gives_every_slice_its_world_position_without_classifying(lab) -> None:
    session = LabelSession(lab.client, "dave")
    session.connect()
    current = session.go_to("study_02", 5)  # no suggestion brought it: the position comes from the map
    assert session.map is not None and session.predictions == {}
    affine = nib.load(str(lab.studies / "study_02.nii.gz")).affine  # synthetic studies are RAS-aligned
    np.testing.assert_allclose(current.world, (affine @ [(SIZE - 1) / 2, (SIZE - 1) / 2, 5, 1.0])[:3], atol=2e-5)
    assert set(session.slice_worlds("study_02")) == set(range(N_SLICES))


def test_slice_image_is_the_model_ready_slice(lab) -> None:
    png = lab.client.slice_png("study_01", 3)
    with Image.open(io.BytesIO(png)) as img:
        shown = np.asarray(img)
    cfg = SliceConfig(resolution=int(CONF["resolution"]))
    expected = model_ready_slice(read_volume(lab.studies / "study_01.nii.gz"), 3, cfg)
    np.testing.assert_array_equal(shown, expected)
    assert not np.array_equal(shown, np.asarray(Image.open(io.BytesIO(lab.client.slice_png("study_01", 4)))))
    for image, slice_index, status, words in (("no_such_study", 0, 404, "no_such_study"),
                                              ("study_01", N_SLICES, 422, f"0..{N_SLICES - 1}"),
                                              ("study_01", -1, 422, f"0..{N_SLICES - 1}")):
        with pytest.raises(ServerError) as refused:
            lab.client.slice_png(image, slice_index)
        assert refused.value.status == status and words in refused.value.detail


def test_classify_current_study(lab, session: LabelSession) -> None:
    session.label("study_00", 2, "lesion")
    session.label("study_02", 5, "normal")
    session.go_to("study_00", 3)
    result = session.classify()
    assert result.image == "study_00"
    assert [p.slice for p in result.slices] == list(range(N_SLICES))
    assert {p.class_name for p in result.slices} <= {"normal", "lesion"}
    assert sum(result.summary.values()) == N_SLICES
    assert result.volume_class in ("normal", "lesion")
    assert result.class_of(2) == "lesion"  # a labelled slice is its own nearest neighbour
    assert result.prediction(2).neighbour.slice == 2
    assert all(p.world is not None for p in result.slices)
    # the slice shown in the viewer knows its class: labels win over predictions
    assert session.class_at("study_00", 2) == ("lesion", "label")
    other = next(p for p in result.slices if p.slice != 2)
    assert session.class_at("study_00", other.slice) == (other.class_name, "prediction")
    assert set(session.slice_worlds("study_00")) == set(range(N_SLICES))


def test_classify_a_study_outside_the_datastore(lab, session: LabelSession, tmp_path: Path) -> None:
    session.label("study_00", 2, "lesion")
    path = tmp_path / "outside.nii.gz"
    make_synthetic_study(path, n_slices=5, size=SIZE, random_state=np.random.default_rng(11))
    result = lab.client.classify_file(path)
    assert len(result.slices) == 5
    assert {p.class_name for p in result.slices} <= {"normal", "lesion"}


def test_study_is_downloaded_once_and_reused(lab, tmp_path: Path) -> None:
    files = StudyFiles(lab.client, tmp_path / "downloads")
    assert files.cached("study_01") is None
    path = files.path("study_01")
    assert path.name == "study_01.nii.gz"
    original = nib.load(str(lab.studies / "study_01.nii.gz"))
    downloaded = nib.load(str(path))
    assert downloaded.shape == original.shape
    assert np.array_equal(np.asarray(downloaded.dataobj), np.asarray(original.dataobj))
    assert files.path("study_01") == path and files.downloads == 1
    with pytest.raises(ServerError) as missing:
        files.path("no_such_study")
    assert missing.value.status == 404


def test_export_all_labels_and_predictions_as_csv(lab, session: LabelSession, tmp_path: Path) -> None:
    session.label("study_00", 1, "lesion")
    session.label("study_01", 6, "normal")
    session.refresh_map()
    session.classify("study_02")
    path = session.export_csv(tmp_path / "out" / "labels.csv")
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == N_STUDIES * N_SLICES
    by_key = {(r["image"], int(r["slice"])): r for r in rows}
    assert by_key[("study_00", 1)]["label"] == "lesion" and by_key[("study_00", 1)]["label_user"] == "alice"
    assert by_key[("study_01", 6)]["label"] == "normal"
    assert all(r["prediction"] in ("normal", "lesion") for r in rows)
    classified = [r for r in rows if r["image"] == "study_02"]
    assert all(r["source"] == "classify" and r["neighbour_image"] for r in classified)

    server_csv = lab.client.export_csv().splitlines()
    assert server_csv[0] == "image,slice,class,user,timestamp"
    assert sorted(line.split(",")[:3] for line in server_csv[1:]) == [
        ["study_00", "1", "lesion"], ["study_01", "6", "normal"]]


def test_no_suggestion_once_every_slice_is_labelled(lab) -> None:
    points = LabelSession(lab.client, "carol")
    points.connect()
    for i in range(len(points.refresh_map())):
        image, slice_index = points.map.key(i)
        lab.client.put_label(image, slice_index, "normal", "carol")
    assert points.next_suggestion() is None
    assert "no slice left" in points.done_message
    _clear_labels(lab.client)


def test_stop_training(lab) -> None:
    session = LabelSession(lab.client, "trainer")
    session.connect()
    session.start_training()
    # at once, as a user who clicks Stop right after Start: MONAI Label may not have spawned the training
    # process yet, and the stop must still end the training that was submitted
    session.stop_training()
    stopped = lab.client.training_status()
    assert stopped.get("status") == "STOPPED", stopped
    deadline = time.monotonic() + 300
    while not session.training_finished():
        assert time.monotonic() < deadline, f"training did not stop\n{lab.server.log()}"
        time.sleep(0.5)
    assert not session.state.training
