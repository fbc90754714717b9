"""A real MRML scene for the Slicer module's tests, from ``slicer-core`` (Slicer's MRML and logic libraries,
without Qt), and the few stand-ins needed to import the module's Qt file.

:class:`MrmlApp` builds what Slicer's application builds at start-up, with the same classes: a scene, the
application logic, the Colors and Volumes module logics, and the standard slice views (Red, Yellow, Green:
``vtkMRMLLayoutLogic`` after ``vtkMRMLSliceNode.AddDefaultSliceOrientationPresets``), each with its
``vtkMRMLSliceLogic``. :meth:`MrmlApp.close` tears it down in the only order after which the process exits
cleanly (anything else segfaults at interpreter exit): ``scene.Clear(0)``, then the slice logics, then the
module logics, then the application logic.

:func:`slicer_standins` installs, for as long as it is active, stand-ins for what ``slicer-core`` does not
have and the module file ``SSStyleGANLabel.py`` imports or its test uses. Each is the smallest thing that
lets that file import and its ``SSStyleGANLabelTest`` run; none of them does MRML work:

* ``qt``: ``QObject`` only (a base class of the widget file); nothing of the widget is run.
* ``slicer.ScriptedLoadableModule``: Slicer's Python template classes (a Slicer file, not in slicer-core,
  that imports Qt); the test base is ``unittest.TestCase`` whose ``delayDisplay`` records the message.
* ``slicer.parameterNodeWrapper``: the decorator and the ``Choice`` / ``WithinRange`` markers, inert.
* ``slicer.app``: ``temporaryPath``, ``applicationLogic()`` (this scene's real one) and ``processEvents()``.
* ``slicer.modules.volumes.logic()``: the module registry, answering this scene's real Volumes logic.

``slicer.mrmlScene`` is set to the real scene.
"""

from __future__ import annotations

import contextlib
import sys
import types
import unittest
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util.numpy_support import vtk_to_numpy

VIEWS = ("Red", "Yellow", "Green")


class MrmlApp:
    """Scene, application logic, module logics and slice views, as Slicer's application makes them.

    Args:
        temporary_path: the application's temporary folder (``slicer.app.temporaryPath`` stand-in).
    """

    def __init__(self, temporary_path: Path) -> None:
        self.temporary_path = Path(temporary_path)
        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        self.colors = slicer.vtkSlicerColorLogic()
        self.colors.SetMRMLApplicationLogic(self.app_logic)
        self.colors.SetMRMLScene(self.scene)
        self.app_logic.SetModuleLogic("Colors", self.colors)  # volume display nodes take their colours here
        self.volumes = slicer.vtkSlicerVolumesLogic()
        self.volumes.SetMRMLApplicationLogic(self.app_logic)
        self.volumes.SetMRMLScene(self.scene)
        self.app_logic.SetModuleLogic("Volumes", self.volumes)
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene)
        self.layout = slicer.vtkMRMLLayoutLogic()
        self.layout.SetMRMLScene(self.scene)  # makes the slice nodes of the default layout
        self.slice_logics: dict[str, Any] = {}
        collection = vtk.vtkCollection()
        for name in VIEWS:
            slice_node = self.scene.GetNodeByID(f"vtkMRMLSliceNode{name}")
            assert slice_node is not None, f"the layout logic made no {name} slice node"
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLApplicationLogic(self.app_logic)
            logic.SetMRMLScene(self.scene)
            logic.SetSliceNode(slice_node)  # makes the view's composite node
            collection.AddItem(logic)
            self.slice_logics[name] = logic
        self.app_logic.SetSliceLogics(collection)

    def load_volume(self, path: str, name: str) -> Any:
        """Read a study with the Volumes module logic (what Slicer's volume reader calls)."""
        node = self.volumes.AddArchetypeVolume(str(path), name, 0)
        if node is None:
            raise OSError(f"slicer-core could not read {path}")
        return node

    def slice_node(self, view: str = "Red") -> Any:
        return self.slice_logics[view].GetSliceNode()

    def match_view_to_voxels(self, volume_node: Any, view: str = "Red") -> None:
        """Size the view so that each of its pixels is one voxel of the volume's slice, centred on it.

        Changes only the view's pixel grid (dimensions, field of view and the half-pixel in-plane origin),
        never the slice plane the Logic chose. Assumes the view lies in a plane of the volume's voxel axes
        (the Logic turns every view to the volume plane).
        """
        slice_node = self.slice_node(view)
        to_ras = slice_node.GetSliceToRAS()
        ijk_to_ras = vtk.vtkMatrix4x4()
        volume_node.GetIJKToRASMatrix(ijk_to_ras)
        m = np.array([[ijk_to_ras.GetElement(i, j) for j in range(3)] for i in range(3)])
        spacing = np.linalg.norm(m, axis=0)
        dims = volume_node.GetImageData().GetDimensions()
        counts, sizes = [], []
        for column in (0, 1):
            axis_ras = np.array([to_ras.GetElement(i, column) for i in range(3)])
            voxel_axis = int(np.argmax(np.abs(axis_ras @ (m / spacing))))
            counts.append(dims[voxel_axis])
            sizes.append(spacing[voxel_axis])
        slice_node.SetDimensions(counts[0], counts[1], 1)
        slice_node.SetFieldOfView(counts[0] * sizes[0], counts[1] * sizes[1], slice_node.GetFieldOfView()[2])
        # a centred jump puts the slice centre on a pixel corner; half a pixel puts it on pixel centres
        slice_node.SetXYZOrigin(sizes[0] / 2.0, sizes[1] / 2.0, 0.0)

    def shown_voxels(self, view: str = "Red") -> np.ndarray:
        """The background layer's voxels resliced onto the view's pixels: ``[rows = view Y, columns = view X]``,
        row 0 at the view's bottom (vtk's image order), before any window/level."""
        reslice = self.slice_logics[view].GetBackgroundLayer().GetReslice()
        reslice.Update()
        image = reslice.GetOutput()
        width, height, _ = image.GetDimensions()
        return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width).copy()

    def close(self) -> None:
        """Tear down in the order slicer-core needs: scene contents, slice logics, module logics, app logic."""
        self.scene.Clear(0)
        self.app_logic.SetSliceLogics(None)
        for logic in self.slice_logics.values():
            logic.SetMRMLScene(None)
            logic.SetMRMLApplicationLogic(None)
        self.slice_logics.clear()
        self.layout.SetMRMLScene(None)
        for logic in (self.volumes, self.colors):
            logic.SetMRMLScene(None)
            logic.SetMRMLApplicationLogic(None)
        self.app_logic.SetModuleLogic("Volumes", None)
        self.app_logic.SetModuleLogic("Colors", None)
        del self.volumes, self.colors, self.layout
        self.app_logic.SetMRMLScene(None)
        del self.app_logic
        del self.scene


class ModuleTestCase(unittest.TestCase):
    """Stand-in for ``ScriptedLoadableModuleTest``: a TestCase whose ``delayDisplay`` records the message."""

    messages: list[str] = []

    def delayDisplay(self, message: str, msec: int = 1000) -> None:
        type(self).messages.append(message)


def _module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def _marker(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def slicer_standins(app: MrmlApp) -> Iterator[None]:
    """Make ``slicer.mrmlScene`` the real scene and install the stand-ins listed in the module docstring."""
    modules = {
        "qt": _module("qt", QObject=type("QObject", (), {})),
        "slicer.ScriptedLoadableModule": _module(
            "slicer.ScriptedLoadableModule",
            ScriptedLoadableModule=type("ScriptedLoadableModule", (), {}),
            ScriptedLoadableModuleWidget=type("ScriptedLoadableModuleWidget", (), {}),
            ScriptedLoadableModuleTest=ModuleTestCase,
        ),
        "slicer.parameterNodeWrapper": _module(
            "slicer.parameterNodeWrapper", parameterNodeWrapper=lambda cls: cls, Choice=_marker, WithinRange=_marker),
    }
    attributes = {
        "mrmlScene": app.scene,
        "app": types.SimpleNamespace(temporaryPath=str(app.temporary_path), applicationLogic=lambda: app.app_logic,
                                     processEvents=lambda: None),
        "modules": types.SimpleNamespace(volumes=types.SimpleNamespace(logic=lambda: app.volumes)),
    }
    saved_modules = {name: sys.modules.get(name) for name in modules}
    saved_attributes = {name: getattr(slicer, name, None) for name in attributes}
    sys.modules.update(modules)
    for name, value in attributes.items():
        setattr(slicer, name, value)
    try:
        yield
    finally:
        for name, module in saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name, value in saved_attributes.items():
            if value is None:
                delattr(slicer, name)
            else:
                setattr(slicer, name, value)
