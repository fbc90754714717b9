"""The Slicer module's Logic against a real MRML scene (slicer-core) and a real server (tiny model).

One MONAI Label server runs for the whole module over studies written in every format and geometry the
module must show right: NIfTI (RAS), NIfTI with its S axis flipped, NIfTI with permuted axes, an oblique
NIfTI, NRRD (LPS, anisotropic, non-square), an oblique MHA and an oblique DICOM series (downloaded as a zip
from ``GET /slicemap/series`` and read by slicer-core from its first file). Each test builds a fresh scene skeleton
(:class:`slicer_mrml.MrmlApp`) and tears it down in the order slicer-core needs.

Geometry is checked on pixels. The red view is turned and jumped by the Logic; the test then only sizes
the view's pixel grid to the volume's voxels (:meth:`MrmlApp.match_view_to_voxels`) and reads the voxels
resliced onto it. What is compared, for every suggestion:

* the shown voxels, put in the library's canonical orientation (view X runs towards L and Y towards A,
  canonical rows towards R and columns towards A, so ``canonical = shown.T[::-1, :]``), against the
  canonical slice the library reads from the study file: **exactly equal** (the view samples voxel
  centres, so linear interpolation returns the stored values);
* those voxels windowed and resized by the library's own preprocessing (the window of the whole volume as
  Slicer loaded it) against the PNG the server sends for that slice (``GET /slicemap/slice``): **exactly
  equal**, since both start from the same voxel values and run the same code; a tolerance would only hide a
  resampling or orientation error;
* and, so that the check can fail, the same image differs from the server's PNG of the neighbouring slice
  and from its own mirror images.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from dicom_series import write_dicom_series
from PIL import Image
from server_harness import start_server
from slicer_mrml import ModuleTestCase, MrmlApp, slicer_standins

from ss_stylegan.config import SliceConfig
from ss_stylegan.data.preprocess import apply_window, resize_square, window_range
from ss_stylegan.data.readers import looks_like_hu, read_volume
from ss_stylegan.data.synthetic import synthetic_volume

MODULE_DIR = Path(__file__).resolve().parent.parent / "slicer_module" / "SSStyleGANLabel"
sys.path.insert(0, str(MODULE_DIR))

from SSStyleGANLabelLib import ServerError, SessionError, SSGLClient, StudyFiles  # noqa: E402
from SSStyleGANLabelLib.recording import RecordingProxy, ReplayServer  # noqa: E402
from SSStyleGANLabelLogic import SSStyleGANLabelLogic  # noqa: E402

SHIPPED_RECORDING = MODULE_DIR / "Resources" / "Testing" / "labelling_loop.json"

pytestmark = pytest.mark.server

N_SLICES, SIZE = 6, 32
# the geometry test takes every slice at once (a cap above the default of 32 per user) and gives them back at
# its end; reservations last long enough (5 minutes) that one never lapses in the middle of a test on a slow machine
CONF = {"preset": "tiny", "resolution": "32", "kimg": "0.1", "batch_size": "8", "perplexity": "5",
        "suggestion_ttl": "300", "suggestion_cap": "1000"}
TRAIN_TIMEOUT_S = 300.0


def _rotation(degrees_about_s: float, degrees_about_r: float) -> np.ndarray:
    a, b = np.deg2rad(degrees_about_s), np.deg2rad(degrees_about_r)
    about_s = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    about_r = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
    return about_s @ about_r


def _nifti(path: Path, data: np.ndarray, directions: np.ndarray, spacing, origin) -> None:
    affine = np.eye(4)
    affine[:3, :3] = directions @ np.diag(spacing)
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(data, affine), str(path))


def _sitk(path: Path, data: np.ndarray, lps_directions: np.ndarray, spacing, origin) -> None:
    image = sitk.GetImageFromArray(np.transpose(data))  # data is [x, y, z]; SimpleITK wants [z, y, x]
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(v) for v in lps_directions.reshape(-1)])
    sitk.WriteImage(image, str(path))


def write_studies(folder: Path) -> dict[str, str]:
    """Write one study per geometry; return ``{image id: what is special about it}``."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)

    def ct(nx: int = SIZE, ny: int = SIZE) -> np.ndarray:
        volume = synthetic_volume(N_SLICES, max(nx, ny), lesion_slices=[2, 3], rng=rng)
        return np.ascontiguousarray(volume[:nx, :ny])

    _nifti(folder / "nifti_ras.nii.gz", ct(), np.eye(3), (11.2, 11.2, 5.0), (-170.0, -170.0, -12.5))
    _nifti(folder / "nifti_flipped.nii.gz", ct(), np.diag([-1.0, 1.0, -1.0]), (0.8, 0.8, 2.5), (30.0, -10.0, 40.0))
    _nifti(folder / "nifti_permuted.nii.gz", np.ascontiguousarray(np.transpose(ct(), (2, 0, 1))),
           np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]), (4.0, 0.9, 0.9), (-14.0, -14.0, -10.0))
    _nifti(folder / "nifti_oblique.nii.gz", ct(), _rotation(15.0, 10.0), (0.9, 1.2, 3.0), (5.0, -20.0, 7.0))
    _sitk(folder / "nrrd_lps.nrrd", ct(SIZE, 28), np.eye(3), (0.7, 0.9, 4.0), (12.0, 8.0, -30.0))
    _sitk(folder / "mha_oblique.mha", ct(), _rotation(-12.0, 8.0), (1.0, 0.8, 2.0), (0.0, 0.0, 0.0))
    lps = _rotation(14.0, -9.0)  # columns: the row (x), column (y) and slice directions in LPS
    write_dicom_series(folder / "dicom_oblique", np.ascontiguousarray(np.transpose(ct(SIZE, 30))),
                       (0.8, 0.7, 3.0), lps[:, 0], lps[:, 1], origin=(-12.0, 15.0, -40.0))
    return {
        "nifti_ras": "NIfTI, RAS affine",
        "nifti_flipped": "NIfTI, S axis (and R axis) flipped",
        "nifti_permuted": "NIfTI, voxel axes permuted (non-identity direction matrix)",
        "nifti_oblique": "NIfTI, oblique direction matrix, anisotropic spacing",
        "nrrd_lps": "NRRD, LPS directions, anisotropic spacing, 32 x 28 in plane",
        "mha_oblique": "MHA, oblique direction matrix, anisotropic spacing",
        "dicom_oblique": "DICOM series folder, oblique, anisotropic spacing, 32 x 30 in plane",
    }


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("slicer_mrml")
    studies = root / "studies"
    kinds = write_studies(studies)
    server = start_server(studies, conf=CONF, log_path=root / "server.log")
    try:
        status, answer = server.request("POST", "/train/ss_stylegan", {})
        assert status == 200, f"training did not start: {status} {answer}\n{server.log()}"
        time.sleep(1.0)
        info = server.wait_for_training(TRAIN_TIMEOUT_S)
        assert info["state"] == "ready", f"training ended as {info['state']}: {info['message']}\n{server.log()}"
        assert info["n_images_embedded"] == len(kinds), info
        yield server, studies, kinds
    finally:
        server.stop()


@pytest.fixture
def mrml(tmp_path: Path) -> Iterator[MrmlApp]:
    app = MrmlApp(tmp_path / "slicer-temp")
    try:
        yield app
    finally:
        app.close()


def _logic(app: MrmlApp, server, tmp_path: Path, user: str, batch_size: int = 1) -> SSStyleGANLabelLogic:
    logic = SSStyleGANLabelLogic(scene=app.scene, temporaryFolder=str(tmp_path / "logic-temp"),
                                 loadVolume=app.load_volume, applicationLogic=app.app_logic)
    logic.connect(server.url, user, batchSize=batch_size)
    return logic


def _clear_labels(logic: SSStyleGANLabelLogic) -> None:
    client = logic.requireSession().client
    for record in client.labels():
        client.delete_label(record.image, record.slice)
    logic.requireSession().sync_labels()


def _png(logic: SSStyleGANLabelLogic, image: str, slice_index: int) -> np.ndarray:
    with Image.open(io.BytesIO(logic.requireSession().client.slice_png(image, slice_index))) as img:
        return np.asarray(img).copy()


def _shown_canonical(app: MrmlApp, node) -> np.ndarray:
    """The red view's voxels in the library's canonical orientation (rows towards R, columns towards A)."""
    app.match_view_to_voxels(node, "Red")
    return app.shown_voxels("Red").T[::-1, :]


def _node_slice(node, world) -> int:
    """Index, in the volume node's own voxel grid, of the voxel plane that holds ``world`` (R, A, S)."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ijk_to_ras = np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])
    ijk = np.linalg.solve(ijk_to_ras, [*world, 1.0])[:3]
    red = slicer.vtkMRMLSliceNode.SafeDownCast(node.GetScene().GetNodeByID("vtkMRMLSliceNodeRed"))
    normal = np.array([red.GetSliceToRAS().GetElement(i, 2) for i in range(3)])
    directions = ijk_to_ras[:3, :3] / np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    axis = int(np.argmax(np.abs(normal @ directions)))
    assert abs(ijk[axis] - round(ijk[axis])) < 1e-6, f"{world} is not on a voxel plane: {ijk}"
    return int(round(ijk[axis]))


def test_the_red_view_shows_the_slice_the_server_means(lab, mrml: MrmlApp, tmp_path: Path) -> None:
    server, studies, kinds = lab
    logic = _logic(mrml, server, tmp_path, "geometry", batch_size=N_SLICES * len(kinds))
    _clear_labels(logic)  # every slice must be suggestible, even after a test that failed before its own cleanup
    cfg = SliceConfig(resolution=int(CONF["resolution"]))
    red = mrml.slice_logics["Red"]
    checked: dict[str, set[int]] = {}
    try:
        while (current := logic.nextSuggestion()) is not None:
            image, k = current.image, current.slice
            node = logic.studyNode(image)
            study = next(p for p in studies.iterdir() if p.name == image or p.name.startswith(image + "."))
            canonical_file = read_volume(study).data[:, :, k]
            shown = _shown_canonical(mrml, node)
            what = f"{image} ({kinds[image]}) slice {k}"
            assert shown.shape == canonical_file.shape, what
            np.testing.assert_array_equal(shown, canonical_file, err_msg=what)

            voxels = slicer.util.arrayFromVolume(node).astype(np.float32)
            window = window_range(voxels, looks_like_hu(voxels), cfg)
            model_ready = resize_square(apply_window(shown[np.newaxis], *window), cfg.resolution)[0]
            server_png = _png(logic, image, k)
            np.testing.assert_array_equal(model_ready, server_png, err_msg=what)
            for neighbour in (k - 1, k + 1):
                if 0 <= neighbour < N_SLICES:
                    assert not np.array_equal(model_ready, _png(logic, image, neighbour)), \
                        f"{what}: same as {neighbour}"
            assert not np.array_equal(model_ready, model_ready[::-1, :]) and not np.array_equal(model_ready,
                                                                                                 model_ready[:, ::-1])

            # Slicer's own (1-based) index of the shown slice in the volume node's voxel grid is the voxel
            # plane holding the server's world position of the slice
            assert red.GetSliceIndexFromOffset(red.GetSliceOffset(), node) == _node_slice(node, current.world) + 1, what
            assert logic.sliceShownIn("Red") == (image, k), what
            checked.setdefault(image, set()).add(k)
    finally:
        # this user holds every slice of the shared server; giving them back (as the widget does when the
        # module closes) lets a test running next (random order) be offered slices at once
        released = logic.releaseSuggestions()
    assert checked == {image: set(range(N_SLICES)) for image in kinds}, "not every slice was suggested"
    assert released == N_SLICES * len(kinds) and logic.session.pending == []


def test_connecting_again_gives_the_earlier_suggestions_back(lab, mrml: MrmlApp, tmp_path: Path) -> None:
    server, _, _ = lab
    logic = _logic(mrml, server, tmp_path, "morning", batch_size=2)
    first = logic.nextSuggestion()
    held = set(logic.session.pending)
    assert first is not None and len(held) == 2
    probe = SSGLClient(server.url, timeout_s=60)
    everything = N_SLICES * len(lab[2])
    try:
        assert not held & {s.key for s in probe.suggest("fps", count=everything, client_id="probe")}  # reserved
        logic.connect(server.url, "afternoon")  # another user at the same Slicer
        assert held <= {s.key for s in probe.suggest("fps", count=everything, client_id="probe")}  # free again
    finally:
        probe.release_suggestions("probe")
    assert logic.releaseSuggestions() == 0  # the new session has asked for nothing


def test_a_study_shown_again_reuses_its_node_and_survives_a_closed_scene(lab, mrml: MrmlApp, tmp_path: Path) -> None:
    server, _, _ = lab
    logic = _logic(mrml, server, tmp_path, "reuse")
    first = logic.goTo("nifti_oblique", 1)
    node = logic.studyNode("nifti_oblique")
    logic.goTo("nifti_ras", 2)
    logic.goTo("nifti_oblique", 4)
    assert logic.studyNode("nifti_oblique") is node and node.GetScene() is mrml.scene
    assert mrml.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 2
    assert logic.studies.downloads == 2
    assert logic.sliceShownIn("Red") == ("nifti_oblique", 4)
    assert first.world is not None  # from the map: the client never classified to learn positions
    assert logic.session.predictions == {}

    mrml.scene.Clear(0)  # the user closes the scene mid-session
    assert logic.studyNode("nifti_oblique") is None and logic.sliceShownIn("Red") is None
    logic.goTo("nifti_oblique", 3)
    again = logic.studyNode("nifti_oblique")
    assert again is not None and again.GetScene() is mrml.scene
    assert logic.studies.downloads == 2  # loaded again from the download, not fetched again
    assert logic.sliceShownIn("Red") == ("nifti_oblique", 3)
    assert mrml.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1
    parameters = logic.getParameterNode()
    assert parameters.GetAttribute("ModuleName") == "SSStyleGANLabel" and logic.getParameterNode() is parameters


def test_a_dicom_series_is_downloaded_once_as_a_zip(lab, tmp_path: Path) -> None:
    server, studies, _ = lab
    files = StudyFiles(SSGLClient(server.url), tmp_path / "downloads")
    first = files.path("dicom_oblique")
    assert first.name == "IM0000.dcm" and files.downloads == 1
    served = sorted(p.name for p in (studies / "dicom_oblique").iterdir())
    assert sorted(p.name for p in first.parent.iterdir()) == served
    assert (first.parent / "IM0003.dcm").read_bytes() == (studies / "dicom_oblique" / "IM0003.dcm").read_bytes()
    assert files.path("dicom_oblique") == first and files.downloads == 1
    for image, words in (("nifti_ras", "GET /datastore/image"), ("no_such_study", "not in the datastore")):
        with pytest.raises(ServerError) as refused:
            files.client.download_series(image, tmp_path / image)
        assert refused.value.status == 404 and words in refused.value.detail
        assert not (tmp_path / image).exists()


def test_predictions_are_a_table_node_saved_with_the_scene(lab, mrml: MrmlApp, tmp_path: Path) -> None:
    server, _, _ = lab
    logic = _logic(mrml, server, tmp_path, "tables")
    _clear_labels(logic)
    session = logic.requireSession()
    session.label("nifti_ras", 1, "normal")
    session.label("nifti_ras", 3, "lesion")
    logic.goTo("nrrd_lps", 2)
    result = logic.classifyCurrent()
    table = logic.predictionsTable("nrrd_lps")
    assert table.GetNumberOfRows() == N_SLICES
    again = logic.classifyCurrent()  # classifying again refills the same node
    assert logic.predictionsTable("nrrd_lps") is table and table.GetNumberOfRows() == len(again.slices)
    expected = {p.slice: p.class_name for p in result.slices}
    assert logic.storedPredictions("nrrd_lps") == expected

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    assert mrml.app_logic.SaveSceneToSlicerDataBundleDirectory(str(bundle), None)
    mrml.scene.Clear(0)
    assert logic.predictionsTable("nrrd_lps") is None
    scene_file = next(bundle.glob("*.mrml"))
    mrml.scene.SetURL(str(scene_file))
    assert mrml.scene.Connect() == 1, f"slicer-core could not reload {scene_file}"

    reader = _logic(mrml, server, tmp_path, "tables-reloaded")  # a new session: no predictions in memory
    reloaded = reader.predictionsTable("nrrd_lps")
    assert reloaded is not None and reloaded.GetNumberOfRows() == N_SLICES
    assert reader.storedPredictions("nrrd_lps") == expected
    column = reloaded.GetTable().GetColumnByName("neighbour image")
    assert {column.GetValue(i) for i in range(N_SLICES)} == {"nifti_ras"}
    assert reader.studyNode("nrrd_lps") is not None  # the study came back with the scene
    reader.goTo("nrrd_lps", 4)
    text, _ = reader.viewAnnotation("Red")
    assert text == f"nrrd_lps slice 4: {expected[4]} (prediction)"
    _clear_labels(logic)


def test_labels_given_through_the_logic_survive_a_server_restart(lab, mrml: MrmlApp, tmp_path: Path) -> None:
    server, _, _ = lab
    logic = _logic(mrml, server, tmp_path, "restart")
    _clear_labels(logic)
    current = logic.goTo("mha_oblique", 5)
    record = logic.labelKey("2")
    assert (record.image, record.slice, record.class_name) == ("mha_oblique", 5, "lesion")
    server.restart()
    after = _logic(mrml, server, tmp_path, "restart-2")
    assert {key: r.class_name for key, r in after.session.labels.items()} == {current.key: "lesion"}
    after.goTo("mha_oblique", 5)
    assert after.viewAnnotation("Red")[0] == "mha_oblique slice 5: lesion (label)"
    _clear_labels(after)


def _run_module_test(mrml: MrmlApp) -> None:
    """The module's own ``SSStyleGANLabelTest`` on this scene; checks that it finished and left its nodes."""
    with slicer_standins(mrml):
        import SSStyleGANLabel

        try:
            ModuleTestCase.messages = []
            SSStyleGANLabel.SSStyleGANLabelTest().runTest()
            assert ModuleTestCase.messages[-1] == "SS-StyleGAN Label logic test finished"
            # it ran on this scene: the study it loaded and the predictions table it made are here
            volumes = [mrml.scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
                       for i in range(mrml.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
            assert len(volumes) == 1 and volumes[0].GetAttribute(SSStyleGANLabelLogic.IMAGE_ID_ATTRIBUTE)
            assert mrml.scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1
        finally:
            sys.modules.pop("SSStyleGANLabel", None)


def test_the_module_own_test_runs_against_the_server_and_against_its_recording(
        lab, mrml: MrmlApp, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Slicer's ctest has no server: the module's test replays answers recorded here from a real one. Run it
    against the real server through a recording proxy, then on a fresh scene against that recording alone.
    ``SSGL_UPDATE_RECORDING=1`` also writes the recording into the module (what Slicer's ctest replays)."""
    server, _, _ = lab
    with RecordingProxy(server.url) as proxy:
        monkeypatch.setenv("SSGL_TEST_SERVER", proxy.url)
        monkeypatch.setenv("SSGL_TEST_TRAIN_TIMEOUT", "60")
        _run_module_test(mrml)
        recording = proxy.save(str(tmp_path / "labelling_loop.json"))
    assert {e["path"].split("?")[0] for e in proxy.exchanges} >= {"/info/", "/activelearning/typiclust", "/slicelabels/",
                                                                  "/infer/classify", "/slicemap/"}
    if os.environ.get("SSGL_UPDATE_RECORDING") == "1":
        shutil.copy(recording, SHIPPED_RECORDING)
    monkeypatch.delenv("SSGL_TEST_SERVER")
    monkeypatch.setenv("SSGL_TEST_RECORDING", recording)
    replay = MrmlApp(tmp_path / "replay-temp")
    try:
        _run_module_test(replay)
    finally:
        replay.close()


def test_the_module_own_test_runs_without_a_server(mrml: MrmlApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """What Slicer's ctest runs: the shipped recording replayed, no server anywhere."""
    monkeypatch.delenv("SSGL_TEST_SERVER", raising=False)
    monkeypatch.delenv("SSGL_TEST_RECORDING", raising=False)
    assert SHIPPED_RECORDING.is_file()
    _run_module_test(mrml)


def test_a_replay_names_the_request_it_has_no_answer_for() -> None:
    exchange = {"method": "GET", "path": "/info/", "status": 200, "headers": {"Content-Type": "application/json"},
                "body": base64.b64encode(b'{"a": 1}').decode()}
    with ReplayServer([exchange, {**exchange, "body": base64.b64encode(b'{"a": 2}').decode()}]) as server:
        answers = [urllib.request.urlopen(server.url + "/info/").read() for _ in range(3)]
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server.url + "/slicemap/")
    assert answers == [b'{"a": 1}', b'{"a": 2}', b'{"a": 2}']      # in order, the last one repeats
    assert err.value.code == 404 and "no recorded answer for GET /slicemap/" in err.value.read().decode()
    assert server.unanswered == ["GET /slicemap/"]


def test_the_module_file_follows_the_scripted_module_template(mrml: MrmlApp) -> None:
    """Imported as Slicer imports it: the template's classes, a parameter node with the settings the widget
    binds, and a Logic that is not Slicer's Qt-side logic class."""
    with slicer_standins(mrml):
        import SSStyleGANLabel
        from slicer.ScriptedLoadableModule import (
            ScriptedLoadableModule,
            ScriptedLoadableModuleTest,
            ScriptedLoadableModuleWidget,
        )

        try:
            assert issubclass(SSStyleGANLabel.SSStyleGANLabel, ScriptedLoadableModule)
            assert issubclass(SSStyleGANLabel.SSStyleGANLabelWidget, ScriptedLoadableModuleWidget)
            assert issubclass(SSStyleGANLabel.SSStyleGANLabelTest, ScriptedLoadableModuleTest)
            assert SSStyleGANLabel.SSStyleGANLabelLogic is SSStyleGANLabelLogic
            assert SSStyleGANLabelLogic.__bases__ == (object,)
            fields = set(SSStyleGANLabel.SSStyleGANLabelParameterNode.__annotations__)
            assert {"serverUrl", "userName", "kimg", "strategy", "batchSize", "colourBy"} <= fields
            assert os.path.isfile(SSStyleGANLabel.RECORDING)
        finally:
            sys.modules.pop("SSStyleGANLabel", None)


def test_the_logic_file_imports_without_qt(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['qt'] = None; sys.modules['ctk'] = None  # any import of them fails\n"
        f"sys.path.insert(0, {str(MODULE_DIR)!r})\n"
        "from SSStyleGANLabelLogic import SSStyleGANLabelLogic\n"
        "print(SSStyleGANLabelLogic.__name__)\n"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "SSStyleGANLabelLogic"


def test_a_click_on_a_finding_shows_its_peak_slice(lab, mrml: MrmlApp, tmp_path: Path) -> None:
    """The findings table lists each run of a finding; a click on a row shows the run's peak slice."""
    server, _, _ = lab
    logic = _logic(mrml, server, tmp_path, "findings")
    _clear_labels(logic)
    session = logic.requireSession()
    for k in range(N_SLICES):  # every slice labelled: the map's 1-NN answers each with its own label
        session.label("nrrd_lps", k, "lesion" if k in (2, 3) else "normal")
    logic.goTo("nrrd_lps", 0)
    result = logic.classifyCurrent()
    assert result.positive == ("lesion",) and result.study_summary.startswith("lesion in slices 2")
    rows = logic.findingRows(result)
    assert [row[:2] for row in rows] == [("lesion (positive)", "2\u20133 (2)")]
    peak = result.runs()[0].peak_slice
    assert logic.goToRun(result, 0).slice == peak in (2, 3)
    assert logic.sliceShownIn() == ("nrrd_lps", peak)
    with pytest.raises(SessionError, match="no row 1"):
        logic.goToRun(result, 1)
