"""The Slicer module's files are sound Python/XML for Slicer 5.8, the Logic stays Qt-free and the Slicer-free
package stays Slicer-free.

3D Slicer's Qt is not available where these tests run (its MRML libraries are: ``test_slicer_mrml.py`` imports
the module file, checks its classes and runs its self-test on a real scene). What needs Qt is checked on the
files: every ``.py`` parses as Slicer 5.8's Python, the ``.ui`` file is parsed as XML and holds every widget the
widget code names and the parameter node's bindings, and the imports of the Logic and of the package are checked.
"""

from __future__ import annotations

import ast
import re
import struct
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "slicer_module"
MODULE_DIR = ROOT / "SSStyleGANLabel"
MODULE_FILE = MODULE_DIR / "SSStyleGANLabel.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "SSStyleGANLabel.ui"
ICON_FILE = MODULE_DIR / "Resources" / "Icons" / "SSStyleGANLabel.png"
LIB_DIR = MODULE_DIR / "SSStyleGANLabelLib"
LOGIC_DIR = MODULE_DIR / "SSStyleGANLabelLogic"
SLICER_ONLY = {"slicer", "qt", "vtk", "ctk", "__main__"}


def _module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"), filename=str(MODULE_FILE))


def _classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def _base_names(cls: ast.ClassDef) -> list[str]:
    return [ast.unparse(base).split(".")[-1] for base in cls.bases]


def _imported_roots(tree: ast.AST) -> set[str]:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_file_compiles(path: Path) -> None:
    compile(path.read_text(encoding="utf-8"), str(path), "exec")


def test_the_logic_imports_only_slicer_vtk_numpy_and_the_package() -> None:
    for path in sorted(LOGIC_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        roots = _imported_roots(tree) - set(sys.stdlib_module_names)
        assert roots <= {"slicer", "vtk", "numpy", "SSStyleGANLabelLib"}, f"{path.name} imports {sorted(roots)}"
        modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not {m for m in modules if m.startswith("slicer.")}, f"{path.name} imports Slicer's Qt-side modules"


def test_the_module_folder_holds_one_python_file() -> None:
    # Slicer loads every .py directly in a module folder as a module of its own: helpers go in sub-packages
    assert sorted(p.name for p in MODULE_DIR.glob("*.py")) == ["SSStyleGANLabel.py"]


def _ui_widgets() -> dict[str, str]:
    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui"
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def test_ui_file_has_every_widget_the_module_uses() -> None:
    widgets = _ui_widgets()
    assert widgets["SSStyleGANLabel"] == "qMRMLWidget"
    used = set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", MODULE_FILE.read_text(encoding="utf-8")))
    assert used, "the widget uses no .ui widgets"
    missing = sorted(used - set(widgets))
    assert not missing, f"widgets used by the module but missing from {UI_FILE.name}: {missing}"


def test_ui_parameter_names_match_the_parameter_node() -> None:
    root = ET.parse(UI_FILE).getroot()
    bound = {
        prop.findtext("string")
        for prop in root.iter("property")
        if prop.get("name") == "SlicerParameterName"
    }
    node = _classes(_module_tree())["SSStyleGANLabelParameterNode"]
    fields = {stmt.target.id for stmt in node.body if isinstance(stmt, ast.AnnAssign)}
    assert bound == fields, f"parameter node fields {sorted(fields)} vs .ui bindings {sorted(bound)}"
    combos = {w.get("name"): [i.findtext("property/string") for i in w.findall("item")]
              for w in root.iter("widget") if w.get("class") == "QComboBox"}
    assert combos["strategyComboBox"] == ["typiclust", "fps", "random", "probcover", "fps_w"]
    assert combos["colourByComboBox"] == ["label", "prediction"]


def test_slicer_free_package_imports_no_slicer_modules() -> None:
    for path in sorted(LIB_DIR.glob("*.py")):
        roots = _imported_roots(ast.parse(path.read_text(encoding="utf-8")))
        assert not roots & SLICER_ONLY, f"{path.name} imports {sorted(roots & SLICER_ONLY)}"
        third_party = roots - set(sys.stdlib_module_names)
        assert third_party <= {"numpy", "matplotlib"}, (
            f"{path.name} imports {sorted(third_party)}: the package may use only the standard library, numpy "
            "and (optionally) matplotlib, which Slicer's Python has"
        )


def test_cmake_lists_every_package_file_and_resource() -> None:
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule" in cmake
    for path in sorted(LIB_DIR.glob("*.py")) + sorted(LOGIC_DIR.glob("*.py")):
        listed = f"${{MODULE_NAME}}{path.parent.name[len('SSStyleGANLabel'):]}/{path.name}"
        assert listed in cmake, f"{listed} is not in MODULE_PYTHON_SCRIPTS"
    assert "Resources/Icons/${MODULE_NAME}.png" in cmake and "Resources/UI/${MODULE_NAME}.ui" in cmake
    top = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for needle in ("project(SSStyleGANLabel)", "EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS",
                   "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "find_package(Slicer REQUIRED)",
                   "include(${Slicer_USE_FILE})", "add_subdirectory(SSStyleGANLabel)",
                   "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert needle in top, f"slicer_module/CMakeLists.txt lacks {needle}"
    s4ext = (ROOT / "SSStyleGANLabel.s4ext").read_text(encoding="utf-8")
    keys = {line.split()[0] for line in s4ext.splitlines() if line.strip() and not line.startswith("#")}
    assert {"scm", "scmurl", "depends", "build_subdirectory", "category", "description", "iconurl"} <= keys


def test_icon_is_a_128_pixel_png() -> None:
    data = ICON_FILE.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (128, 128)


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_sources_parse_as_python_3_9_of_slicer_5_8(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 9))
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in tree.body)
    if future:
        return  # annotations stay strings; `X | None` in them is never evaluated
    annotations = [n.annotation for n in ast.walk(tree) if isinstance(n, (ast.arg, ast.AnnAssign)) and n.annotation]
    annotations += [n.returns for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.returns]
    unions = [ast.unparse(a) for a in annotations
              if any(isinstance(b, ast.BinOp) and isinstance(b.op, ast.BitOr) for b in ast.walk(a))]
    assert not unions, f"{path.name}: `X | Y` annotations fail at runtime on Slicer's Python 3.9: {unions}"
