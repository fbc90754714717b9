"""3D Slicer module of SS-StyleGAN Label: label the slices a MONAI Label server suggests, classify the rest.

Module / parameter node / Widget / Test, as in Slicer's scripted-module template; the Logic lives in the
Qt-free package ``SSStyleGANLabelLogic`` next to this file (MRML scene and slice views only, tested against a
real MRML scene with ``slicer-core``). Everything that is not Slicer (HTTP, the labelling session, the map
data, slice geometry) lives in the Slicer-free package ``SSStyleGANLabelLib``, tested with pytest against a
real server. The widget wires the UI to the logic and draws; it keeps everything Qt.

This file is written for Slicer's Python (3.9 in Slicer 5.8): no ``X | Y`` annotations evaluated at runtime.
"""

import logging
import os
import tempfile
import time
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SSStyleGANLabelLib import ModelState
from SSStyleGANLabelLib.recording import ReplayServer
from SSStyleGANLabelLib.mapview import class_colour, matplotlib_available, render_png
from SSStyleGANLabelLogic import SSStyleGANLabelLogic
from SSStyleGANLabelLogic.logic import VIEW_NAME

logger = logging.getLogger(__name__)

TRAINING_POLL_MS = 2000
RECORDING = os.path.join(os.path.dirname(__file__), "Resources", "Testing", "labelling_loop.json")
THUMBNAIL_PIXELS = 128


#
# SSStyleGANLabel
#


class SSStyleGANLabel(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SS-StyleGAN Label"
        self.parent.categories = ["Active Learning"]
        self.parent.dependencies = []
        self.parent.contributors = ["SS-StyleGAN Label developers"]
        self.parent.helpText = """
Few-label classification of CT slices with SS-StyleGAN (Cohen Hochberg, Greenspan, Giryes, IEEE TMI 2022).
Connect to the SS-StyleGAN Label MONAI Label server, train the model on the server's studies (no labels needed),
then label the slices it suggests with one click or the number keys 1..9, and classify every other slice.
Press N for the next suggestion. Double-click a labelled slice to go back and relabel it; click a dot in the map
to jump to that slice.
"""
        self.parent.acknowledgementText = """
Method: SS-StyleGAN, IEEE Transactions on Medical Imaging 41(12), 2022 (arXiv 2312.15972).
Server: MONAI Label. Map: openTSNE.
"""


#
# SSStyleGANLabelParameterNode
#


@parameterNodeWrapper
class SSStyleGANLabelParameterNode:
    """Settings saved with the scene (the password never is).

    serverUrl - address of the SS-StyleGAN Label server.
    userName - stored with every label; also the login name when the server needs one.
    kimg - training length in thousands of images; 0 keeps the server's setting.
    strategy - "typiclust" (TypiClust in W: measured best, the server's default), "fps" (farthest point sampling in
        the t-SNE map, the paper's), "random" (baseline), "probcover" or "fps_w" (in W).
    batchSize - suggestions fetched per server request.
    colourBy - colour the map by "label" or "prediction".
    """

    serverUrl: str = "http://127.0.0.1:8000"
    userName: str = ""
    kimg: Annotated[float, WithinRange(0.0, 100000.0)] = 0.0
    strategy: Annotated[str, Choice(["typiclust", "fps", "random", "probcover", "fps_w"])] = "typiclust"
    batchSize: Annotated[int, WithinRange(1, 50)] = 1
    colourBy: Annotated[str, Choice(["label", "prediction"])] = "label"


#
# SSStyleGANLabelWidget
#


class _ClickFilter(qt.QObject):
    """Qt event filter calling ``callback(x, y)`` on a left click in the map view."""

    def __init__(self, callback):
        qt.QObject.__init__(self)
        self.callback = callback

    def eventFilter(self, obj, event):
        if event.type() == qt.QEvent.MouseButtonPress and event.button() == qt.Qt.LeftButton:
            self.callback(event.pos().x(), event.pos().y())
            return True
        return False


class SSStyleGANLabelWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the .ui to the logic and draws the results; holds no labelling state of its own."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._classButtons = []
        self._shortcuts = []
        self._mapScene = None
        self._mapFilter = None
        self._predictionsImage = None  # the study whose slices fill the predictions table
        self._findings = None  # the classification whose runs fill the findings table
        self._trainingTimer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SSStyleGANLabel.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SSStyleGANLabelLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.connectButton.connect("clicked(bool)", self.onConnect)
        self.ui.startTrainingButton.connect("clicked(bool)", self.onStartTraining)
        self.ui.stopTrainingButton.connect("clicked(bool)", self.onStopTraining)
        self.ui.nextSuggestionButton.connect("clicked(bool)", self.onNextSuggestion)
        self.ui.removeLabelButton.connect("clicked(bool)", self.onRemoveLabel)
        self.ui.labelledTableWidget.connect("cellDoubleClicked(int,int)", self.onLabelledRowDoubleClicked)
        self.ui.predictionsTableWidget.connect("cellDoubleClicked(int,int)", self.onPredictionRowDoubleClicked)
        self.ui.findingsTableWidget.connect("cellClicked(int,int)", self.onFindingRowClicked)
        self.ui.refreshMapButton.connect("clicked(bool)", self.onRefreshMap)
        self.ui.colourByComboBox.connect("currentIndexChanged(int)", lambda _index: self.drawMap())
        self.ui.classifyButton.connect("clicked(bool)", self.onClassify)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)

        self._trainingTimer = qt.QTimer()
        self._trainingTimer.setInterval(TRAINING_POLL_MS)
        self._trainingTimer.connect("timeout()", self.onTrainingTimer)

        self._mapFilter = _ClickFilter(self.onMapClicked)
        self.ui.mapGraphicsView.viewport().installEventFilter(self._mapFilter)
        self.ui.mapGraphicsView.setScene(qt.QGraphicsScene())

        nextShortcut = qt.QShortcut(qt.QKeySequence("N"), slicer.util.mainWindow())
        nextShortcut.connect("activated()", self.onNextSuggestion)
        self._shortcuts.append(nextShortcut)

        sliceNode = slicer.mrmlScene.GetNodeByID(f"vtkMRMLSliceNode{VIEW_NAME}")
        if sliceNode is not None:
            self.addObserver(sliceNode, vtk.vtkCommand.ModifiedEvent, self.onSliceMoved)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.logic is not None and self.logic.isConnected():
            try:  # give the suggestions not labelled back, so other annotators get them now
                self.logic.releaseSuggestions()
            except Exception as err:  # closing Slicer must not fail because the server is gone
                logger.warning("could not give back pending suggestions: %s", err)
        self.removeObservers()
        if self._trainingTimer is not None:
            self._trainingTimer.stop()
        self._setShortcutsEnabled(False)

    def enter(self) -> None:
        self.initializeParameterNode()
        self._setShortcutsEnabled(True)

    def exit(self) -> None:
        self._setShortcutsEnabled(False)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(SSStyleGANLabelParameterNode(self.logic.getParameterNode()))

    def setParameterNode(self, inputParameterNode: Optional[SSStyleGANLabelParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    def _setShortcutsEnabled(self, enabled: bool) -> None:
        for shortcut in self._shortcuts:
            shortcut.setEnabled(enabled)

    # -- server and training ---------------------------------------------------------------------
    def onConnect(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not connect to the SS-StyleGAN Label server.", waitCursor=True):
            state = self.logic.connect(p.serverUrl, p.userName, self.ui.passwordLineEdit.text, p.strategy, p.batchSize)
            self._buildClassButtons(state.classes)
            self.showState(state)
            self.updateLabelledTable()
            if state.training:
                self._trainingTimer.start()

    def _buildClassButtons(self, classes) -> None:
        layout = self.ui.classButtonsWidget.layout()
        for button in self._classButtons:
            layout.removeWidget(button)
            button.deleteLater()
        self._classButtons = []
        keep = self._shortcuts[:1]  # the "N" shortcut stays
        for shortcut in self._shortcuts[1:]:
            shortcut.setEnabled(False)
            shortcut.deleteLater()
        self._shortcuts = keep
        for key, name in self.logic.classShortcuts().items():
            red, green, blue = (int(255 * c) for c in class_colour(name, classes))
            button = qt.QPushButton(f"{key}: {name}")
            button.toolTip = f"Label the slice on screen as '{name}' (key {key})"
            button.setStyleSheet(f"background-color: rgb({red},{green},{blue}); color: white; font-weight: bold")
            button.connect("clicked(bool)", lambda _checked, n=name: self.onLabel(n))
            layout.addWidget(button)
            self._classButtons.append(button)
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.connect("activated()", lambda n=name: self.onLabel(n))
            self._shortcuts.append(shortcut)

    def showState(self, state: ModelState) -> None:
        version = state.model_version or "none"
        self.ui.modelStateLabel.text = (
            f"{state.state}: {state.n_embedded}/{state.n_slices} slices in the map, "
            f"{state.n_labelled} labelled (model {version})\n{state.map_summary()}"
        )
        self.ui.classesLabel.text = ", ".join(state.classes)
        fraction = state.progress_fraction
        self.ui.trainingProgressBar.value = int(round(100 * fraction)) if fraction is not None else 0
        self.ui.trainingMessageLabel.text = state.message
        self.ui.startTrainingButton.enabled = not state.training
        self.ui.stopTrainingButton.enabled = state.training
        for button in (self.ui.nextSuggestionButton, self.ui.refreshMapButton, self.ui.classifyButton,
                       self.ui.exportButton):
            button.enabled = state.has_map   # maps are published while training runs

    def onStartTraining(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not start training.", waitCursor=True):
            self.showState(self.logic.startTraining(self._parameterNode.kimg))
            self._trainingTimer.start()

    def onStopTraining(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not stop training.", waitCursor=True):
            self.showState(self.logic.stopTraining())

    def onTrainingTimer(self) -> None:
        try:
            state, finished = self.logic.pollTraining()
        except Exception as err:  # a poll that fails (server restarting) is retried at the next tick
            self.ui.trainingMessageLabel.text = f"cannot read training progress: {err}"
            return
        self.showState(state)
        if finished:
            self._trainingTimer.stop()

    # -- labelling -------------------------------------------------------------------------------
    def onNextSuggestion(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not get the next suggestion.", waitCursor=True):
            current = self.logic.nextSuggestion()
            if current is None:
                self.ui.currentSliceLabel.text = self.logic.doneMessage()
            self.showCurrent()

    def onLabel(self, className: str) -> None:
        with slicer.util.tryWithErrorDisplay("Could not store the label.", waitCursor=True):
            self.logic.labelAndMoveOn(className)   # one click per slice: a labelled suggestion moves on
            self.updateLabelledTable()
            self.showCurrent()

    def onRemoveLabel(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not remove the label.", waitCursor=True):
            self.logic.removeCurrentLabel()
            self.updateLabelledTable()
            self.showCurrent()

    def onLabelledRowDoubleClicked(self, row: int, column: int) -> None:
        table = self.ui.labelledTableWidget
        with slicer.util.tryWithErrorDisplay("Could not show that slice.", waitCursor=True):
            self.logic.goTo(table.item(row, 0).text(), int(table.item(row, 1).text()))
            self.showCurrent()

    def onFindingRowClicked(self, row: int, column: int) -> None:
        """A click on a run of a finding shows its peak slice."""
        if self._findings is None:
            return
        with slicer.util.tryWithErrorDisplay("Could not show that slice.", waitCursor=True):
            self.logic.goToRun(self._findings, row)
            self.showCurrent()

    def onPredictionRowDoubleClicked(self, row: int, column: int) -> None:
        if self._predictionsImage is None:
            return
        with slicer.util.tryWithErrorDisplay("Could not show that slice.", waitCursor=True):
            self.logic.goTo(self._predictionsImage, int(self.ui.predictionsTableWidget.item(row, 0).text()))
            self.showCurrent()

    def showCurrent(self) -> None:
        text, removable = self.logic.currentDescription()
        self.ui.removeLabelButton.enabled = removable
        current = self.logic.currentSlice()
        if current is not None:
            self.ui.currentSliceLabel.text = text
            self.showThumbnail(current.image, current.slice)
        self.onSliceMoved()
        self.drawMap()

    def showThumbnail(self, image: str, sliceIndex: int) -> None:
        """The slice as the model sees it (server's PNG), beside the slice views."""
        try:
            path = self.logic.sliceThumbnail(image, sliceIndex)
        except Exception as err:  # a thumbnail is a help, never a reason to stop labelling
            self.ui.thumbnailLabel.text = f"no model image: {err}"
            return
        pixmap = qt.QPixmap(path)
        self.ui.thumbnailLabel.setPixmap(pixmap.scaled(THUMBNAIL_PIXELS, THUMBNAIL_PIXELS, qt.Qt.KeepAspectRatio))

    def updateLabelledTable(self) -> None:
        rows = self.logic.labelledRows()
        table = self.ui.labelledTableWidget
        table.setRowCount(len(rows))
        for row, values in enumerate(rows):
            for column, value in enumerate(values):
                table.setItem(row, column, qt.QTableWidgetItem(value))

    def onSliceMoved(self, caller=None, event=None) -> None:
        """Show the class of the slice in the axial view as a coloured corner annotation."""
        if self.logic is None or not self.logic.isConnected():
            return
        text, rgb = self.logic.viewAnnotation(VIEW_NAME)
        sliceWidget = slicer.app.layoutManager().sliceWidget(VIEW_NAME)
        if sliceWidget is None:
            return
        view = sliceWidget.sliceView()
        corner = view.cornerAnnotation()
        corner.SetText(vtk.vtkCornerAnnotation.UpperRight, text)
        corner.GetTextProperty().SetColor(*rgb)
        view.forceRender()

    # -- map -------------------------------------------------------------------------------------
    def onRefreshMap(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not fetch the map.", waitCursor=True):
            points = self.logic.refreshMap()
            self.ui.mapInfoLabel.text = f"{len(points)} slices; model {points.model_version or 'unknown'}"
            self.drawMap()

    def drawMap(self) -> None:
        view = self.ui.mapGraphicsView
        width, height = max(view.viewport().width, 100), max(view.viewport().height, 100)
        mapScene = self.logic.mapScene(width, height, self._parameterNode.colourBy)
        if mapScene is None:
            return
        self._mapScene = mapScene
        scene = qt.QGraphicsScene()
        scene.setSceneRect(0, 0, width, height)
        if matplotlib_available():
            path = render_png(self._mapScene, os.path.join(slicer.app.temporaryPath, "SSStyleGANLabel-map.png"))
            scene.addPixmap(qt.QPixmap(str(path)))
        else:
            for dot in self._mapScene.dots():
                r = dot["radius"]
                pen = qt.QPen(qt.QColor(*dot["ring"]), 2) if dot["ring"] else qt.QPen(qt.Qt.NoPen)
                scene.addEllipse(dot["x"] - r, dot["y"] - r, 2 * r, 2 * r, pen, qt.QBrush(qt.QColor(*dot["rgb"])))
        view.setScene(scene)
        view.setSceneRect(0, 0, width, height)

    def onMapClicked(self, x: int, y: int) -> None:
        if self._mapScene is None:
            return
        point = self.ui.mapGraphicsView.mapToScene(qt.QPoint(x, y))
        key = self._mapScene.pick(point.x(), point.y())
        if key is None:
            return
        with slicer.util.tryWithErrorDisplay("Could not show that slice.", waitCursor=True):
            self.logic.goTo(*key)
            self.showCurrent()

    # -- classification and export ---------------------------------------------------------------
    def onClassify(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not classify the study.", waitCursor=True):
            result = self.logic.classifyCurrent()
            self._predictionsImage = result.image
            table = self.ui.predictionsTableWidget
            table.setRowCount(len(result.slices))
            for row, pred in enumerate(result.slices):
                neighbour = f"{pred.neighbour.image} slice {pred.neighbour.slice}" if pred.neighbour else ""
                for column, value in enumerate((str(pred.slice), pred.class_name, f"{pred.score:.2f}", neighbour)):
                    table.setItem(row, column, qt.QTableWidgetItem(value))
            counts = ", ".join(f"{name}: {n}" for name, n in result.summary.items())
            self.ui.volumeSummaryLabel.text = (f"{result.image}: {result.study_summary or result.volume_class} ({counts}; "
                                               f"classifier {result.classifier})")
            self._findings = result
            rows = self.logic.findingRows(result)
            self.ui.findingsTableWidget.setRowCount(len(rows))
            for row, values in enumerate(rows):
                for column, value in enumerate(values):
                    self.ui.findingsTableWidget.setItem(row, column, qt.QTableWidgetItem(value))
            self.onSliceMoved()
            self.drawMap()

    def onExport(self) -> None:
        path = qt.QFileDialog.getSaveFileName(
            slicer.util.mainWindow(), "Export labels and predictions", "ss_stylegan_labels.csv", "CSV files (*.csv)"
        )
        if not path:
            return
        with slicer.util.tryWithErrorDisplay("Could not export the CSV file.", waitCursor=True):
            written = self.logic.exportCsv(path)
            slicer.util.infoDisplay(f"Labels and predictions written to {written}")


#
# SSStyleGANLabelTest
#


class SSStyleGANLabelTest(ScriptedLoadableModuleTest):
    """Drives the logic through a labelling loop: suggestion, study loaded and shown, label, thumbnail,
    classification into a table node, map, CSV export, label removed again.

    Where no server runs (Slicer's ctest), the server's answers come from a recording made by the project's
    pytest suite against a real server (``Resources/Testing/labelling_loop.json``, or the file named by
    ``SSGL_TEST_RECORDING``), replayed on 127.0.0.1. With ``SSGL_TEST_SERVER`` set, it runs against that
    server instead, training it first when needed (``SSGL_TEST_TRAIN_TIMEOUT`` seconds at most).
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LabellingLoop()

    def _waitUntilReady(self, logic, timeout_s: float) -> ModelState:
        state = logic.refreshState()
        if not state.ready and not state.training:
            state = logic.startTraining()
        deadline = time.monotonic() + timeout_s
        while not state.ready and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(2.0)
            state, finished = logic.pollTraining()
            if finished and not state.ready:
                self.fail(f"training ended without a model: {state.state} - {state.message}")
        self.assertTrue(state.ready, f"model not ready after {timeout_s:.0f} s: {state.state} {state.message}")
        return state

    def test_LabellingLoop(self):
        url = os.environ.get("SSGL_TEST_SERVER")
        if url:
            self.delayDisplay(f"Connecting to the SS-StyleGAN Label server at {url}")
            self._labellingLoop(url)
        else:
            recording = os.environ.get("SSGL_TEST_RECORDING") or RECORDING
            self.delayDisplay(f"Replaying the server answers recorded in {os.path.basename(recording)}")
            with ReplayServer(recording) as server:
                self._labellingLoop(server.url)
                self.assertEqual(server.unanswered, [], "requests the recording has no answer for")

    def _labellingLoop(self, url: str) -> None:
        logic = SSStyleGANLabelLogic()
        with tempfile.TemporaryDirectory() as folder:
            state = logic.connect(url, "slicer-module-test", downloadFolder=folder)
            self.assertGreaterEqual(len(state.classes), 2, f"server classes: {state.classes}")
            state = self._waitUntilReady(logic, float(os.environ.get("SSGL_TEST_TRAIN_TIMEOUT", "900")))

            self.delayDisplay("Next suggestion: load the study and jump to the slice")
            current = logic.nextSuggestion()
            self.assertIsNotNone(current, "the server had nothing to suggest")
            self.assertTrue(current.image)
            self.assertGreaterEqual(current.slice, 0)
            node = logic.loadStudy(current.image)
            self.assertEqual(node.GetAttribute(logic.IMAGE_ID_ATTRIBUTE), current.image)
            self.assertIsNotNone(node.GetImageData())
            self.assertIs(logic.loadStudy(current.image), node)  # loaded once, then reused
            self.assertEqual(logic.studies.downloads, 1)
            self.assertEqual(logic.sliceShownIn(VIEW_NAME), (current.image, current.slice))

            self.delayDisplay("Label the slice, then check the server stored it")
            className = state.classes[0]
            record = logic.labelKey("1")
            self.assertEqual((record.image, record.slice, record.class_name), (current.image, current.slice, className))
            stored = logic.storedClasses(current.image)
            self.assertEqual(stored.get((current.image, current.slice)), className)
            text, _ = logic.viewAnnotation(VIEW_NAME)
            self.assertIn(className, text)

            thumbnail = logic.sliceThumbnail(current.image, current.slice)
            with open(thumbnail, "rb") as fh:
                self.assertEqual(fh.read(8), b"\x89PNG\r\n\x1a\n")

            self.delayDisplay("Classify the study; the answer is kept in a table node")
            result = logic.classifyCurrent()
            self.assertGreater(len(result.slices), 0)
            self.assertTrue(all(p.class_name in state.classes for p in result.slices))
            self.assertEqual(sum(result.summary.values()), len(result.slices))
            table = logic.predictionsTable(current.image)
            self.assertIsNotNone(table)
            self.assertEqual(table.GetNumberOfRows(), len(result.slices))
            self.assertEqual(logic.storedPredictions(current.image), {p.slice: p.class_name for p in result.slices})

            self.delayDisplay("Map and CSV export")
            points = logic.refreshMap()
            self.assertGreater(len(points), 0)
            csvPath = logic.exportCsv(os.path.join(folder, "export.csv"))
            with open(csvPath, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
            self.assertTrue(lines[0].startswith("image,slice,label"))
            self.assertIn(f"{current.image},{current.slice},{className},", "\n".join(lines))

            logic.removeCurrentLabel()
            self.assertNotIn((current.image, str(current.slice)), [row[:2] for row in logic.labelledRows()])
        self.delayDisplay("SS-StyleGAN Label logic test finished")
