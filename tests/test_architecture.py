"""The layout the architecture promises (docs/ARCHITECTURE.md), checked on the code and on the running app:

- the app (`monailabel_app/`) is adapters only: no module over 250 lines, none that works on arrays (numpy);
- the library (`lib/ss_stylegan`) never imports the server or the viewer; its concepts live in subpackages (at
  most six modules at its top level) and no module of it is over 500 lines;
- the app's trainer is an adapter of one screen (at most 80 lines);
- every route in the running app's OpenAPI is in ARCHITECTURE.md's route table, and the table names no route
  the app does not have.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from server_harness import TINY_CONF, start_server

from ss_stylegan.data.synthetic import make_synthetic_datastore

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "monailabel_app"
LIBRARY = REPO / "lib" / "ss_stylegan"
MAX_APP_MODULE_LINES = 250
MAX_LIBRARY_MODULE_LINES = 500
MAX_TOP_LEVEL_MODULES = 6
MAX_TRAINER_LINES = 80
ROUTE_ROW = re.compile(r"^\| `(GET|PUT|POST|DELETE|HEAD|PATCH) (/[^`]*)` \|")


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_app_modules_are_small_adapters() -> None:
    modules = sorted(APP.rglob("*.py"))
    assert len(modules) > 10
    too_long = {str(p.relative_to(REPO)): n for p in modules if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_APP_MODULE_LINES}
    assert not too_long, f"app modules over {MAX_APP_MODULE_LINES} lines (move logic into lib/ss_stylegan): {too_long}"
    array_work = [str(p.relative_to(REPO)) for p in modules if imported_modules(p) & {"numpy", "scipy", "sklearn"}]
    assert not array_work, f"app modules that work on arrays (belongs in the library): {array_work}"


def test_library_never_imports_the_server_or_the_viewer() -> None:
    offending = {str(p.relative_to(REPO)): sorted(bad) for p in sorted(LIBRARY.rglob("*.py"))
                 if (bad := imported_modules(p) & {"monailabel", "fastapi", "starlette", "slicer", "qt", "lib"})}
    assert not offending, offending


def test_library_concepts_live_in_subpackages() -> None:
    top_level = sorted(p.name for p in LIBRARY.glob("*.py"))
    assert len(top_level) <= MAX_TOP_LEVEL_MODULES, f"modules at the top of lib/ss_stylegan: {top_level}"
    packages = sorted(p.parent.name for p in LIBRARY.glob("*/__init__.py"))
    assert {"data", "model", "training", "maps", "selection", "classification", "labelling", "evaluation"} \
        <= set(packages), packages
    too_long = {str(p.relative_to(REPO)): n for p in sorted(LIBRARY.rglob("*.py"))
                if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LIBRARY_MODULE_LINES}
    assert not too_long, f"library modules over {MAX_LIBRARY_MODULE_LINES} lines (split them by concept): {too_long}"


def test_every_library_module_is_in_the_module_map() -> None:
    """ARCHITECTURE.md's library map names every module (a newcomer reads it before the tree)."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("## Library map", 1)[1].split("\n### ", 1)[0]
    missing = [str(p.relative_to(LIBRARY)) for p in sorted(LIBRARY.rglob("*.py"))
               if p.name not in ("__init__.py", "__main__.py") and p.parent.name != "networks"
               and f"`{p.relative_to(LIBRARY)}`" not in section]
    assert not missing, f"modules missing from ARCHITECTURE.md's library map: {missing}"


def test_the_app_trainer_is_an_adapter() -> None:
    trainer = APP / "lib" / "trainers" / "ss_stylegan.py"
    n = len(trainer.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_TRAINER_LINES, f"{trainer.relative_to(REPO)} has {n} lines: the work belongs in ss_stylegan.maps"


def documented_routes() -> set[tuple[str, str]]:
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    section = text.split("### Every route", 1)[1].split("\n### ", 1)[0]
    return {(m.group(1), m.group(2)) for line in section.splitlines() if (m := ROUTE_ROW.match(line))}


@pytest.mark.server
def test_every_route_of_the_running_app_is_in_the_architecture_table(tmp_path: Path) -> None:
    make_synthetic_datastore(tmp_path / "studies", n_studies=1, n_slices=4, size=32, random_state=0)
    with start_server(tmp_path / "studies", TINY_CONF, log_path=tmp_path / "server.log") as server:
        spec = server.get_json("/openapi.json")
    served = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    documented = documented_routes()
    assert len(served) > 30
    assert not served - documented, f"routes missing from ARCHITECTURE.md's table: {sorted(served - documented)}"
    assert not documented - served, f"ARCHITECTURE.md's table names routes the app does not have: " \
                                    f"{sorted(documented - served)}"
