"""The Logic of the SS-StyleGAN Label module: everything it does to the MRML scene, and nothing with Qt.

It imports only ``slicer``, ``vtk``, numpy and the Slicer-free ``SSStyleGANLabelLib``, so it runs in 3D Slicer
and, for the tests, in plain Python with the ``slicer-core`` package (Slicer's MRML and logic libraries
without Qt). The scene, the temporary folder, the volume loader and the application logic are arguments with
Slicer's as defaults; the widget uses the defaults.

What it does in the scene:

* **Studies**: a study is downloaded once and loaded as a scalar volume node tagged with its image id
  (:attr:`SSStyleGANLabelLogic.IMAGE_ID_ATTRIBUTE`); showing it again reuses that node, and a study whose
  node was removed (the scene was closed) is loaded again from the download.
* **Slice views**: every slice view shows the study, turned to the volume's own plane (so an oblique study
  shows its true voxel plane), and jumps, centred, to the world position of the slice the server means
  (``vtkMRMLSliceNode.JumpAllSlices``).
* **Predictions**: a classified study's per-slice answer is kept in a table node
  (:attr:`SSStyleGANLabelLogic.PREDICTIONS_ATTRIBUTE`), saved with the scene and read back after reloading it.

Written for Slicer's Python (3.9 in Slicer 5.8).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import slicer
import vtk

from SSStyleGANLabelLib import (
    Classification,
    CurrentSlice,
    LabelSession,
    MapScene,
    MapPoints,
    ModelState,
    SessionError,
    SliceLabel,
    SSGLClient,
    SSGLError,
    StudyFiles,
)
from SSStyleGANLabelLib.atomicfile import write_bytes_atomic
from SSStyleGANLabelLib.geometry import axial_axis, canonical_slice_world, slice_at_plane
from SSStyleGANLabelLib.mapview import class_colour

logger = logging.getLogger(__name__)

VIEW_NAME = "Red"  # the axial slice view that shows the current slice and its class
MODULE_NAME = "SSStyleGANLabel"

PREDICTION_COLUMNS = ("slice", "class", "score", "neighbour image", "neighbour slice", "neighbour distance")
"""Columns of a predictions table node, in order."""

VolumeLoader = Callable[[str, str], object]
"""``(file path, node name) -> volume node`` added to the scene."""


def loadVolumeWithSlicer(path: str, name: str):
    """Slicer's own volume reading: the Volumes module logic's ``AddArchetypeVolume`` (what Slicer's
    volume reader calls), which also reads a DICOM series from its first file."""
    node = slicer.modules.volumes.logic().AddArchetypeVolume(path, name, 0)
    if node is None:
        raise SessionError(f"Slicer could not read the study file {path}: check that it is a complete image")
    return node


class SSStyleGANLabelLogic:
    """Loads studies, moves the slice views and keeps predictions in the scene; delegates everything else
    to ``SSStyleGANLabelLib``.

    Usable without the widget (the module test and the MRML tests drive it directly). It keeps no MRML node
    between calls: nodes are found in the scene by attribute every time, so closing the scene is safe.

    Args:
        scene: the MRML scene (default ``slicer.mrmlScene``).
        temporaryFolder: where downloads and thumbnails go (default ``slicer.app.temporaryPath``).
        loadVolume: ``(path, name) -> volume node`` (default :func:`loadVolumeWithSlicer`).
        applicationLogic: used only to fit the slice views to a newly loaded study (default
            ``slicer.app.applicationLogic()`` with Slicer's scene; with another scene the views are fitted
            only when its application logic is given).
    """

    IMAGE_ID_ATTRIBUTE = "SSStyleGANLabel.ImageId"
    PREDICTIONS_ATTRIBUTE = "SSStyleGANLabel.Predictions"
    MODEL_VERSION_ATTRIBUTE = "SSStyleGANLabel.ModelVersion"

    def __init__(self, scene=None, temporaryFolder: Optional[str] = None,
                 loadVolume: Optional[VolumeLoader] = None, applicationLogic=None) -> None:
        self.scene = scene if scene is not None else slicer.mrmlScene
        self.temporaryFolder = str(temporaryFolder if temporaryFolder is not None else slicer.app.temporaryPath)
        self.loadVolume = loadVolume or loadVolumeWithSlicer
        if applicationLogic is None and scene is None:
            applicationLogic = slicer.app.applicationLogic()
        self.applicationLogic = applicationLogic
        self.session: Optional[LabelSession] = None
        self.studies: Optional[StudyFiles] = None

    def getParameterNode(self):
        """The module's parameter node in this scene (made when missing), as Slicer's template logic does;
        the widget wraps it in its ``parameterNodeWrapper`` class."""
        node = self.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = self.scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)  # CreateNodeByClass hands over a reference; the scene keeps its own
            node.SetSingletonTag(MODULE_NAME)
            node.SetName(self.scene.GenerateUniqueName(MODULE_NAME))
            node = self.scene.AddNode(node)
        if node.GetAttribute("ModuleName") != MODULE_NAME:  # removed when a scene is closed
            node.SetAttribute("ModuleName", MODULE_NAME)
        return node

    def requireSession(self) -> LabelSession:
        if self.session is None:
            raise SessionError("not connected: enter the server URL and press Connect")
        return self.session

    # -- server and training ---------------------------------------------------------------------
    def connect(self, url: str, user: str, password: str = "", strategy: str = "typiclust", batchSize: int = 1,
                downloadFolder: Optional[str] = None) -> ModelState:
        """Connect (logging in when a password is given), read the model state and mirror the labels."""
        client = SSGLClient(url, username=(user or None) if password else None, password=password or None)
        session = LabelSession(client, user or "slicer", strategy=strategy, batch_size=batchSize)
        state = session.connect()
        previous, self.session = self.session, session
        if previous is not None and previous.pending:
            try:  # the earlier connection's suggestions would otherwise stay reserved until they expire
                previous.release_pending()
            except SSGLError as err:
                logger.warning("could not give back the suggestions of the previous connection: %s", err)
        self.studies = StudyFiles(client, downloadFolder or os.path.join(self._workFolder(), "studies"))
        return state

    def releaseSuggestions(self) -> int:
        """Give this session's suggestions not labelled back to the server, so other annotators are offered
        those slices now (the widget calls it when the module is closed); 0 when not connected."""
        if self.session is None:
            return 0
        return len(self.session.release_pending())

    def _workFolder(self) -> str:
        """``<temporary folder>/SSStyleGANLabel/<server>``: one folder per server."""
        url = self.requireSession().client.url
        host = "".join(c if c.isalnum() else "_" for c in url.split("://", 1)[-1])
        return os.path.join(self.temporaryFolder, MODULE_NAME, host)

    def startTraining(self, kimg: float = 0.0) -> ModelState:
        return self.requireSession().start_training(kimg=kimg if kimg and kimg > 0 else None)

    def stopTraining(self) -> ModelState:
        return self.requireSession().stop_training()

    def refreshState(self) -> ModelState:
        """The model state read from the server now."""
        return self.requireSession().refresh_state()

    def pollTraining(self):
        """One poll: ``(state, finished)``; the widget calls it from a ``qt.QTimer``."""
        session = self.requireSession()
        finished = session.training_finished()
        return session.state, finished

    # -- nodes -----------------------------------------------------------------------------------
    def _nodes(self, className: str) -> List[object]:
        """Every node of a class in this logic's scene (``slicer.util.getNodesByClass`` ignores its
        ``scene`` argument and always reads ``slicer.mrmlScene``)."""
        count = self.scene.GetNumberOfNodesByClass(className)
        return [self.scene.GetNthNodeByClass(i, className) for i in range(count)]

    def _nodeTagged(self, className: str, attribute: str, value: str):
        return next((n for n in self._nodes(className) if n.GetAttribute(attribute) == value), None)

    def studyNode(self, image: str):
        """The volume node of a study if it is in the scene, else None."""
        return self._nodeTagged("vtkMRMLScalarVolumeNode", self.IMAGE_ID_ATTRIBUTE, image)

    # -- studies and slice views -----------------------------------------------------------------
    def loadStudy(self, image: str):
        """The volume node of a datastore study, downloading and loading it only the first time, shown as
        the background of every slice view."""
        node = self.studyNode(image)
        loaded = node is not None
        if not loaded:
            if self.studies is None:
                raise SessionError("not connected: enter the server URL and press Connect")
            node = self.loadVolume(str(self.studies.path(image)), image)
            node.SetAttribute(self.IMAGE_ID_ATTRIBUTE, image)
        for composite in self._nodes("vtkMRMLSliceCompositeNode"):
            composite.SetBackgroundVolumeID(node.GetID())
        for sliceNode in self._nodes("vtkMRMLSliceNode"):
            sliceNode.RotateToVolumePlane(node)  # an oblique study is shown in its own voxel plane
        if not loaded and self.applicationLogic is not None:
            self.applicationLogic.FitSliceToAll(False, False)  # keep the volume-plane orientation
        return node

    def showSlice(self, current: CurrentSlice):
        """Load the slice's study if needed and centre every slice view on the slice (pure MRML)."""
        node = self.loadStudy(current.image)
        world = current.world
        if world is None:
            ijkToRas, dims = self._geometry(node)
            world = canonical_slice_world(ijkToRas, dims, current.slice)
        slicer.vtkMRMLSliceNode.JumpAllSlices(self.scene, world[0], world[1], world[2],
                                              slicer.vtkMRMLSliceNode.CenteredJumpSlice)
        return node

    @staticmethod
    def _geometry(node) -> Tuple[np.ndarray, Tuple[int, int, int]]:
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        ijkToRas = np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])
        return ijkToRas, node.GetImageData().GetDimensions()

    def sliceWorlds(self, image: str, node) -> Dict[int, Tuple[float, float, float]]:
        """Slice index -> world centre: the server's positions, and the volume's geometry for slices the
        server did not place (e.g. left out of the map as empty)."""
        ijkToRas, dims = self._geometry(node)
        axis, _ = axial_axis(ijkToRas)
        worlds = {k: canonical_slice_world(ijkToRas, dims, k) for k in range(dims[axis])}
        worlds.update(self.requireSession().slice_worlds(image))
        return worlds

    def sliceShownIn(self, viewName: str = VIEW_NAME):
        """``(image, slice)`` the view's plane cuts through, or None (no study of ours shown, or between slices)."""
        composite = self.scene.GetNodeByID(f"vtkMRMLSliceCompositeNode{viewName}")
        sliceNode = self.scene.GetNodeByID(f"vtkMRMLSliceNode{viewName}")
        if composite is None or sliceNode is None:
            return None
        node = self.scene.GetNodeByID(composite.GetBackgroundVolumeID() or "")
        image = node.GetAttribute(self.IMAGE_ID_ATTRIBUTE) if node is not None else None
        if not image:
            return None
        m = sliceNode.GetSliceToRAS()
        origin = [m.GetElement(i, 3) for i in range(3)]
        normal = [m.GetElement(i, 2) for i in range(3)]
        ijkToRas, _ = self._geometry(node)
        axis, _ = axial_axis(ijkToRas)
        halfSpacing = 0.5 * node.GetSpacing()[axis]  # the plane lies within half a slice of the slice centre
        index = slice_at_plane(self.sliceWorlds(image, node), origin, normal, max_distance=halfSpacing + 1e-3)
        return None if index is None else (image, index)

    def viewAnnotation(self, viewName: str = VIEW_NAME):
        """Text and RGB colour telling the class of the slice the view shows (a label, else a prediction of
        this session, else one saved in the scene's predictions table)."""
        shown = self.sliceShownIn(viewName)
        if shown is None:
            return "", (1.0, 1.0, 1.0)
        session = self.requireSession()
        className, source = session.class_at(*shown)
        if className is None:
            className = self.storedPredictions(shown[0]).get(shown[1])
            source = "prediction" if className else ""
        if className is None:
            return f"{shown[0]} slice {shown[1]}: not labelled", (1.0, 1.0, 1.0)
        return f"{shown[0]} slice {shown[1]}: {className} ({source})", class_colour(className, session.classes)

    def sliceThumbnail(self, image: str, sliceIndex: int) -> str:
        """A PNG file of the slice as the model sees it (``GET /slicemap/slice``), for the widget to show."""
        png = self.requireSession().client.slice_png(image, int(sliceIndex))
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in image)
        path = Path(self._workFolder()) / "thumbnails" / f"{safe}_{int(sliceIndex)}.png"
        return str(write_bytes_atomic(path, png))

    # -- what the widget shows -------------------------------------------------------------------
    def isConnected(self) -> bool:
        return self.session is not None

    def classShortcuts(self) -> Dict[str, str]:
        """``{key: class}``: the number key of each class (1..9), in the server's class order."""
        return dict(self.requireSession().shortcuts)

    def doneMessage(self) -> str:
        """What to tell the user when the server has no suggestion left."""
        return self.requireSession().done_message

    def currentDescription(self) -> Tuple[str, bool]:
        """``(text, removable)``: the slice on screen with its class (label or prediction) and why it was
        suggested, and whether it has a label that can be removed; ``("", False)`` when none is shown."""
        session = self.requireSession()
        current = session.current
        if current is None:
            return "", False
        className, source = session.class_at(current.image, current.slice)
        suggestion = current.suggestion
        why = f" - suggested: {suggestion.reason}" if suggestion is not None and suggestion.reason else ""
        shown = f"{className} ({source})" if className else "not labelled"
        return f"{current.image}, slice {current.slice}: {shown}{why}", current.key in session.labels

    def currentSlice(self) -> Optional[CurrentSlice]:
        return self.requireSession().current

    def labelAndMoveOn(self, className: str) -> SliceLabel:
        """Label the slice on screen; when it was a suggestion, show the next one (one click per slice)."""
        session = self.requireSession()
        current = session.current
        label = session.label_current(className)
        if current is not None and current.suggestion is not None:
            self.nextSuggestion()
        return label

    def labelledRows(self) -> List[Tuple[str, str, str, str]]:
        """Rows of the labelled-slices table: image, slice, class, user."""
        return [(r.image, str(r.slice), r.class_name, r.user) for r in self.requireSession().labelled_slices()]

    def storedClasses(self, image: str) -> Dict[Tuple[str, int], str]:
        """The server's labels of one study, read now (not this session's mirror)."""
        return {(r.image, r.slice): r.class_name for r in self.requireSession().client.labels(image)}

    def mapScene(self, width: int, height: int, colourBy: str) -> Optional[MapScene]:
        """The map to draw at ``width`` x ``height``, coloured by ``colourBy``, with this session's suggestions
        ringed and the slice on screen marked; None before the map was fetched."""
        if self.session is None or self.session.map is None:
            return None
        session = self.session
        current = session.current.key if session.current else None
        return MapScene(session.map, session.classes, width, height, mode=colourBy,
                        highlighted=tuple(session.pending), current=current)

    # -- labelling, map, classification ----------------------------------------------------------
    def nextSuggestion(self) -> Optional[CurrentSlice]:
        current = self.requireSession().next_suggestion()
        if current is not None:
            self.showSlice(current)
        return current

    def goTo(self, image: str, sliceIndex: int) -> CurrentSlice:
        current = self.requireSession().go_to(image, sliceIndex)
        self.showSlice(current)
        return current

    def labelCurrent(self, className: str) -> SliceLabel:
        return self.requireSession().label_current(className)

    def labelKey(self, key: str) -> SliceLabel:
        return self.requireSession().label_key(key)

    def removeCurrentLabel(self) -> None:
        session = self.requireSession()
        if session.current is None:
            raise SessionError("no slice is shown")
        session.unlabel(session.current.image, session.current.slice)

    def refreshMap(self) -> MapPoints:
        return self.requireSession().refresh_map()

    def classifyCurrent(self) -> Classification:
        """Classify the study on screen and keep the answer in its predictions table node."""
        session = self.requireSession()
        result = session.classify()
        self.storePredictions(result, session.state.model_version if session.state else None)
        return result

    @staticmethod
    def findingRows(result: Classification) -> List[Tuple[str, str, str, str]]:
        """The rows of the findings table: class (marked when the study is positive for it), slices, world z
        range and peak, one per run of adjacent slices, in the order of :meth:`Classification.runs`."""
        rows = []
        for run in result.runs():
            mark = " (positive)" if run.class_name in result.positive else ""
            z = f"{run.z_mm[0]:.1f} to {run.z_mm[1]:.1f}" if run.z_mm is not None else ""
            rows.append((f"{run.class_name}{mark}", f"{run.slices_text} ({run.n_slices})", z,
                         f"slice {run.peak_slice}, score {run.peak_score:.2f}"))
        return rows

    def goToRun(self, result: Classification, row: int) -> CurrentSlice:
        """Show the peak slice of the run in row ``row`` of :meth:`findingRows`."""
        runs = result.runs()
        if not 0 <= row < len(runs):
            raise SessionError(f"the study has {len(runs)} run(s) of findings; there is no row {row}")
        return self.goTo(result.image, runs[row].peak_slice)

    def exportCsv(self, path: str) -> str:
        session = self.requireSession()
        if session.map is None:
            session.refresh_map()
        return str(session.export_csv(path))

    # -- predictions tables ----------------------------------------------------------------------
    def predictionsTable(self, image: str):
        """The predictions table node of a study, or None when it was never classified in this scene."""
        return self._nodeTagged("vtkMRMLTableNode", self.PREDICTIONS_ATTRIBUTE, image)

    def storePredictions(self, result: Classification, modelVersion: Optional[str] = None):
        """Write a classification into the study's table node (made once, refilled on every classification)."""
        table = self.predictionsTable(result.image)
        if table is None:
            table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", self.scene.GenerateUniqueName(
                f"{result.image} predictions"))
            table.SetAttribute(self.PREDICTIONS_ATTRIBUTE, result.image)
        table.SetAttribute(self.MODEL_VERSION_ATTRIBUTE, modelVersion or "")
        rows = result.slices
        columns = (
            (vtk.vtkIntArray(), [p.slice for p in rows]),
            (vtk.vtkStringArray(), [p.class_name for p in rows]),
            (vtk.vtkDoubleArray(), [p.score for p in rows]),
            (vtk.vtkStringArray(), [p.neighbour.image if p.neighbour else "" for p in rows]),
            (vtk.vtkIntArray(), [p.neighbour.slice if p.neighbour else -1 for p in rows]),
            (vtk.vtkDoubleArray(), [p.neighbour.distance if p.neighbour else float("nan") for p in rows]),
        )
        wasModifying = table.StartModify()
        table.RemoveAllColumns()
        for name, (array, values) in zip(PREDICTION_COLUMNS, columns):
            array.SetName(name)
            array.SetNumberOfValues(len(values))
            for i, value in enumerate(values):
                array.SetValue(i, value)
            table.AddColumn(array)
        table.EndModify(wasModifying)
        return table

    def storedPredictions(self, image: str) -> Dict[int, str]:
        """Slice -> predicted class from the study's predictions table (e.g. in a scene saved earlier)."""
        table = self.predictionsTable(image)
        if table is None or table.GetNumberOfRows() == 0:
            return {}
        vtkTable = table.GetTable()
        slices, classes = vtkTable.GetColumnByName("slice"), vtkTable.GetColumnByName("class")
        if slices is None or classes is None:
            logger.warning("table %s has no 'slice'/'class' columns; ignoring it", table.GetName())
            return {}
        return {int(slices.GetValue(i)): str(classes.GetValue(i)) for i in range(table.GetNumberOfRows())}
