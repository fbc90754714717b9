"""A damaged workspace never stops the server: truncated or garbled map versions, pointer and label journal.

Each test damages its own copy of a trained datastore that holds two published versions of the map (the
training's, then an update of it made with the library's own ``publish_update``), starts a real server on it,
and checks that the server starts, serves the newest complete version, and says in ``/info/`` what it skipped.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from server_harness import TINY_CONF, start_server

from ss_stylegan.maps.slice_map import MapVersion
from ss_stylegan.workspace import Workspace

pytestmark = pytest.mark.server

LEGACY = Path(__file__).resolve().parent / "data" / "legacy_labels"


def two_versions(studies: Path) -> tuple[Workspace, MapVersion, MapVersion]:
    """Publish an update of the trained map (the same slices: the server has nothing to embed) so that the
    workspace holds an older and a newer complete version; return ``(workspace, older, newer)``."""
    ws = Workspace(studies / ".ss_stylegan")
    older = ws.current_version()
    assert older is not None
    slice_map = ws.load_map(older)
    newer = ws.publish_update(slice_map.without(set()), older)
    assert ws.current_version() == newer and newer != older
    return ws, older, newer


def _served_version(server) -> str:  # type: ignore[no-untyped-def]
    info = server.get_json("/info/")["ss_stylegan"]
    assert info["state"] == "ready", info
    return info["map"]["version"]


@pytest.mark.parametrize("damage", ["truncated", "garbled", "emptied"])
def test_a_damaged_live_map_serves_the_newest_complete_version(
        tmp_path: Path, trained_studies: Callable[..., Path], damage: str) -> None:
    studies = trained_studies()
    ws, older, newer = two_versions(studies)
    arrays = newer.map_path
    data = arrays.read_bytes()
    arrays.write_bytes({"truncated": data[: len(data) // 2], "garbled": b"\x00garbage" * 64 + data[512:],
                        "emptied": b""}[damage])
    with start_server(studies, TINY_CONF, log_path=tmp_path / "server.log") as server:
        assert _served_version(server) == older.name
        problems = server.get_json("/info/")["ss_stylegan"]["problems"]
        assert any(f"{newer.name}/{arrays.name} cannot be read" in p and f"serving {older.name} instead" in p
                   for p in problems), problems
        points = server.get_json("/slicemap/")
        assert len(points["points"]["image"]) == len(ws.load_map(older))
        status, answer = server.request("POST", "/activelearning/fps", {})
        assert status == 200 and answer.get("id"), answer
    assert (studies / ".ss_stylegan" / "damaged" / newer.name).is_dir()  # kept for inspection, never served


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing", "not an object"])
def test_a_damaged_pointer_is_rebuilt_from_the_versions_on_disk(
        tmp_path: Path, trained_studies: Callable[..., Path], damage: str) -> None:
    studies = trained_studies()
    ws, older, newer = two_versions(studies)
    text = ws.pointer_path.read_bytes()
    if damage == "missing":
        ws.pointer_path.unlink()
    else:
        ws.pointer_path.write_bytes({"truncated": text[:20], "garbage": b"\xff\xfe\x00 nonsense",
                                     "not an object": b"[1, 2]"}[damage])
    with start_server(studies, TINY_CONF, log_path=tmp_path / "server.log") as server:
        assert _served_version(server) == newer.name
        problems = server.get_json("/info/")["ss_stylegan"]["problems"]
        assert any("current.json" in p and f"serving {newer.name} instead" in p for p in problems), problems
        status, _ = server.request("GET", "/slicemap/")
        assert status == 200
    pointer = json.loads(ws.pointer_path.read_text(encoding="utf-8"))
    assert pointer["current"] == f"maps/{newer.name}" and "rebuilt" in pointer


def test_no_readable_version_starts_untrained_and_says_why(tmp_path: Path,
                                                            trained_studies: Callable[..., Path]) -> None:
    studies = trained_studies()
    ws, older, newer = two_versions(studies)
    for version in (older, newer):
        version.map_path.write_bytes(b"cut")
    with start_server(studies, TINY_CONF, log_path=tmp_path / "server.log") as server:
        info = server.get_json("/info/")["ss_stylegan"]
        assert info["state"] == "untrained" and "no readable slice map" in info["message"], info
        assert any("no readable map version is left" in p for p in info["problems"]), info["problems"]
        status, answer = server.request("POST", "/activelearning/fps", {})
        assert status == 409 and "not trained yet" in answer["detail"], answer
        status, _ = server.request("PUT", "/slicelabels/", {"image": "study_00", "slice": 1, "class": "lesion"})
        assert status == 200  # labels are still taken


def test_a_damaged_label_journal_starts_and_keeps_every_complete_line(
        tmp_path: Path, trained_studies: Callable[..., Path]) -> None:
    """A label folder of the old journal store, with a torn append, bytes that are not UTF-8 and a line cut off
    at its end (each stopped the server before): it starts, every complete label is served, and ``/info/``
    names the lines it skipped."""
    studies = trained_studies()
    labels = studies / "labels" / "slice_class"
    shutil.rmtree(labels, ignore_errors=True)
    shutil.copytree(LEGACY, labels)
    with open(labels / ".journal.jsonl", "ab") as fh:
        fh.write(b"\x80\x81 trailing garbage without a newline \xc3")
    conf = {**TINY_CONF, "classes": "normal,lesion"}
    with start_server(studies, conf, log_path=tmp_path / "server.log") as server:
        stored = {(r["image"], r["slice"]): r["class"] for r in server.get_json("/slicelabels/")["labels"]}
        problems = server.get_json("/info/")["ss_stylegan"]["problems"]
    # the legacy labels name studies study_00..03; the trained copy has study_00..02 (study_03's are flagged)
    assert stored[("study_03", 6)] == "normal" and len(stored) == 13
    assert sum("slice labels: skipped .journal.jsonl" in p for p in problems) == 3, problems
    assert "line 8: not UTF-8, cut off by a crash" in problems[-1]
