"""Library parts of the app without a server: slice label store, slice map files, reservations."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ss_stylegan.labelling.label_store import SliceLabelStore
from ss_stylegan.labelling.label_values import (
    SliceOutOfRangeError,
    UnknownClassError,
    UnknownImageError,
    parse_classes,
)
from ss_stylegan.labelling.validation import FieldError
from ss_stylegan.maps.versions import DamagedVersionError, WorkspaceError
from ss_stylegan.maps.slice_map import MapVersion, SliceMap
from ss_stylegan.labelling.reservations import PendingSuggestions, ReservationLimitError
from ss_stylegan.workspace import TrainingStatus, Workspace

DEPTHS = {"a": 10, "b": 1}


def _store(folder: Path) -> SliceLabelStore:
    return SliceLabelStore(folder, ["normal", "lesion"], DEPTHS.get)


def test_label_store_round_trip_and_csv(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.set("a", 3, "lesion", "alice")
    store.set("a", 3, "normal", "bob")  # change
    store.set("b", 0, "lesion")
    assert [(r["image"], r["slice"], r["class"]) for r in store.records()] == [("a", 3, "normal"), ("b", 0, "lesion")]
    reopened = _store(tmp_path)
    assert reopened.labelled_keys() == {("a", 3): "normal", ("b", 0): "lesion"}
    rows = list(csv.DictReader(io.StringIO(reopened.to_csv())))
    assert [(r["image"], r["slice"], r["class"], r["user"]) for r in rows] == [("a", "3", "normal", "bob"),
                                                                             ("b", "0", "lesion", "")]
    assert reopened.remove("b", 0) and not reopened.remove("b", 0)
    assert reopened.exports.flush() and not (tmp_path / "b.json").exists()  # the export follows the database
    assert len(_store(tmp_path)) == 1


@pytest.mark.parametrize(
    ("image", "slice_index", "cls", "error", "message"),
    [
        ("zzz", 0, "normal", UnknownImageError, "not in the datastore"),
        ("../a", 0, "normal", FieldError, "image: contains a path separator"),
        ("a", 10, "normal", SliceOutOfRangeError, "0..9"),
        ("a", -1, "normal", FieldError, "slice: must be an integer >= 0"),
        ("a", 1.5, "normal", FieldError, "slice: must be an integer"),
        ("a", True, "normal", FieldError, "slice: must be an integer, got bool"),
        ("a", 1, "tumour", UnknownClassError, "valid classes are"),
    ],
)
def test_label_store_refuses_bad_input(tmp_path: Path, image: str, slice_index: int, cls: str,
                                       error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        _store(tmp_path).set(image, slice_index, cls)


def test_label_store_concurrent_writers_keep_every_label(tmp_path: Path) -> None:
    store = _store(tmp_path)
    threads = [threading.Thread(target=store.set, args=("a", k, "lesion", f"user{k}")) for k in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with sqlite3.connect(tmp_path / ".labels.sqlite") as db:  # every one in the store of record
        assert db.execute("SELECT COUNT(*) FROM labels WHERE image = 'a'").fetchone() == (10,)
    assert len(_store(tmp_path)) == 10
    assert store.exports.flush() and len(json.loads((tmp_path / "a.json").read_text(encoding="utf-8"))) == 10


def test_parse_classes() -> None:
    assert parse_classes(" normal , lesion ") == ["normal", "lesion"]
    with pytest.raises(ValueError, match="at least two"):
        parse_classes("normal")


def _publish_map(ws: Workspace, slice_map: SliceMap) -> MapVersion:
    """Publish a map without a model (checkpoint and projector are not needed to read a map)."""
    with ws.new_version(slice_map.model_version) as version:
        ws.save_map(slice_map, version)
        ws.activate(version)
    return version


def test_slice_map_save_load_extend(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(WorkspaceError, match="train the model first"):
        ws.load_map()
    rng = np.random.default_rng(0)
    m = SliceMap(image_ids=["a", "a", "b"], slices=[1, 0, 0], positions=rng.normal(size=(3, 3)),
                 w=rng.normal(size=(3, 8)), xy=rng.normal(size=(3, 2)), model_version="v1",
                 errors={"bad": "cannot read"}, depths={"a": 10, "b": 1})
    _publish_map(ws, m)
    loaded = ws.load_map()
    assert loaded.model_version == "v1" and loaded.errors == {"bad": "cannot read"} and loaded.depths == DEPTHS
    np.testing.assert_array_equal(loaded.xy, m.xy)
    assert loaded.rows_of("a").tolist() == [1, 0] and loaded.row_lookup()[("b", 0)] == 2
    bigger = loaded.extended(["c"], [4], np.zeros((1, 3)), np.ones((1, 8)), np.ones((1, 2)), depths={"c": 5})
    assert len(bigger) == 4 and bigger.image_set() == {"a", "b", "c"} and bigger.depths["c"] == 5
    loaded.version.map_path.write_bytes(b"truncated")
    with pytest.raises(DamagedVersionError, match="slice_map.npz cannot be read"):
        ws.load_map()


def _map(model_version: str, n: int) -> SliceMap:
    rng = np.random.default_rng(n)
    return SliceMap(image_ids=["a"] * n, slices=range(n), positions=rng.normal(size=(n, 3)),
                    w=rng.normal(size=(n, 4)), xy=rng.normal(size=(n, 2)), model_version=model_version)


def test_publish_switches_one_pointer_and_survives_an_interrupted_publish(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    first = _publish_map(ws, _map("v1", 3))
    assert ws.load_map().model_version == "v1" and ws.current_version() == first
    stamp = ws.map_stamp()

    # a training killed mid-publish: new folder with a checkpoint and half a map, pointer not switched
    half = MapVersion.in_folder(ws.maps_dir / "20000101-000000-000000000-v2")
    half.checkpoint_dir.mkdir(parents=True)
    (half.checkpoint_dir / "ckpt-00000004.pt").write_bytes(b"weights")
    half.map_path.write_bytes(b"partial")
    assert ws.load_map().model_version == "v1" and ws.map_stamp() == stamp
    with pytest.raises(WorkspaceError, match="no complete slice map"):
        ws.activate(half)

    # the server's update of the current map is a new version: new folder, new stamp, the first one kept
    update = ws.publish_update(
        ws.load_map().extended(["b"], [0], np.zeros((1, 3)), np.ones((1, 4)), np.ones((1, 2))), first)
    assert len(ws.load_map()) == 4 and ws.map_stamp() == ws.stamp_of(update) and ws.map_stamp() != stamp
    assert len(ws.load_map(first)) == 3

    # the next complete publish becomes current, keeps the one it replaces, removes the older and half-written ones
    with ws.new_version("v2") as second:
        ws.save_map(_map("v2", 5), second)
        assert ws.load_map().model_version == "v1"  # written, not yet current
        ws.activate(second)
    assert ws.load_map().model_version == "v2" and len(ws.load_map()) == 5
    assert sorted(p.name for p in ws.maps_dir.iterdir()) == sorted([update.name, second.name])
    pointer = json.loads(ws.pointer_path.read_text(encoding="utf-8"))
    assert pointer["current"] == f"maps/{second.name}" and pointer["previous"] == f"maps/{update.name}"

    # a pointer naming a folder without a complete map (damaged by hand): readers use the previous one
    second.map_meta_path.unlink()
    assert ws.load_map().model_version == "v1" and ws.current_version() == update
    # a damaged pointer: rebuilt from the newest complete version on disk, and said so
    ws.pointer_path.write_text("{", encoding="utf-8")
    assert ws.current_version() == update and ws.load_map().model_version == "v1"
    assert "current.json is unreadable" in ws.problems[-1] and f"serving {update.name} instead" in ws.problems[-1]
    assert json.loads(ws.pointer_path.read_text(encoding="utf-8"))["current"] == f"maps/{update.name}"
    shutil.rmtree(update.folder)  # and with no complete version left: none
    ws.pointer_path.write_text("{", encoding="utf-8")
    assert ws.current_version() is None and not ws.has_map() and not ws.pointer_path.exists()


def test_a_version_is_written_once(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    version = _publish_map(ws, _map("v1", 3))
    with pytest.raises(WorkspaceError, match="never change"):
        ws.save_map(_map("v1", 5), version)
    assert len(ws.load_map()) == 3
    # a block that does not make its version current leaves nothing behind
    with ws.new_version("v1") as unused:
        ws.save_map(_map("v1", 4), unused)
    assert not unused.folder.exists() and ws.current_version() == version


def test_status_and_stop_flag(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    assert ws.read_status().state == "untrained"
    ws.write_status(TrainingStatus(state="training", progress={"step": 3}))
    assert ws.read_status().progress == {"step": 3} and ws.read_status().updated > 0
    ws.status_path.write_text("{", encoding="utf-8")
    assert ws.read_status().state == "untrained"
    assert not ws.stop_requested()
    ws.request_stop()
    assert ws.stop_requested()
    ws.clear_stop()
    assert not ws.stop_requested()
    with pytest.raises(ValueError, match="state must be one of"):
        ws.write_status(TrainingStatus(state="bogus"))


def test_pending_suggestions_per_client_with_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    import ss_stylegan.labelling.reservations as workspace_module

    class Clock:  # the test's own clock for the module: a slow machine cannot make a reservation lapse early
        def __getattr__(self, name: str):
            return getattr(time, name)

        def monotonic(self) -> float:
            return now[0]

    now = [1000.0]
    monkeypatch.setattr(workspace_module, "time", Clock())
    pending = PendingSuggestions(ttl_s=0.2)
    pending.reserve("alice", [("a", 1), ("a", 2)])
    pending.reserve("bob", [("a", 3)])
    assert pending.reserved(exclude_client="bob") == {("a", 1), ("a", 2)}
    pending.reserve("alice", [("a", 4)])  # replaces alice's earlier reservations
    assert pending.reserved() == {("a", 3), ("a", 4)}
    pending.release(("a", 3))
    assert pending.reserved() == {("a", 4)}
    now[0] += 0.19
    assert pending.reserved() == {("a", 4)}
    now[0] += 0.02
    assert pending.reserved() == set()


def test_a_client_gives_back_only_its_own_reservations() -> None:
    pending = PendingSuggestions(ttl_s=60, cap=8)
    pending.reserve("tab-1", [("a", 1), ("a", 2)], owner="user:ann")
    pending.reserve("tab-2", [("a", 3)], owner="user:ann")
    pending.reserve("bob", [("b", 1)])
    assert pending.release_client("tab-1", owner="user:eve") == []  # the same client id, another user
    assert pending.release_client("tab-1", owner="user:ann") == [("a", 1), ("a", 2)]
    assert pending.reserved() == {("a", 3), ("b", 1)}
    assert pending.room("tab-2", "user:ann") == 8 and pending.room("tab-9", "user:ann") == 7
    assert pending.release_client("bob") == [("b", 1)]  # without an owner the client owns its reservations
    assert pending.release_client("bob") == []


def test_reservations_are_capped_per_owner() -> None:
    pending = PendingSuggestions(ttl_s=60, cap=3)
    pending.check_count(3, "alice-1", owner="alice")
    with pytest.raises(ReservationLimitError, match="at most 3 suggestions per user"):
        pending.check_count(4, "alice-1", owner="alice")
    pending.reserve("alice-1", [("a", 1), ("a", 2)], owner="alice")
    assert pending.room("alice-1", "alice") == 3  # a new request replaces the client's own reservations
    assert pending.room("alice-2", "alice") == 1  # another client id of the same user shares the cap
    with pytest.raises(ReservationLimitError, match="2 are reserved under its other client ids"):
        pending.check_count(2, "alice-2", owner="alice")
    assert pending.room("bob", "bob") == 3


def test_atomic_writes_replace_whole_files_with_normal_permissions(tmp_path: Path) -> None:
    import os
    import stat

    from ss_stylegan.storage.atomic import atomic_write_text

    target = tmp_path / "labels.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text(encoding="utf-8") == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["labels.json"]  # no temporary file left behind
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    from ss_stylegan.storage.atomic import atomic_write

    target = tmp_path / "embeddings.npz"
    target.write_bytes(b"complete old content")

    def half_then_crash(fh) -> None:  # noqa: ANN001 - a binary file object
        fh.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_crash)
    assert target.read_bytes() == b"complete old content"
    assert [p.name for p in tmp_path.iterdir()] == ["embeddings.npz"]
