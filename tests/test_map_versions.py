"""Published map versions never change: a training publishes new versions, a map update (studies added,
dropped or read again) is a new version derived from the current one, and the check that its parent is still
current happens atomically with the pointer switch, across processes. Real files on disk, real processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from folder_snapshot import snapshot

from ss_stylegan.labelling.indexes import MapRows
from ss_stylegan.maps.slice_map import MapVersion, SliceMap
from ss_stylegan.maps.versions import (
    DamagedVersionError,
    StaleVersionError,
    WorkspaceError,
)
from ss_stylegan.storage.atomic import atomic_write_bytes, atomic_write_text
from ss_stylegan.workspace import Workspace


class FakeProjector:
    """Anything with ``save(folder)`` can be published; this one writes two small files like TSNEProjector."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def save(self, folder: Path) -> Path:
        atomic_write_bytes(Path(folder) / "projector.npz", self.tag.encode() * 100)
        atomic_write_text(Path(folder) / "projector.json", f'{{"tag": "{self.tag}"}}')
        return Path(folder)


def _checkpoint(folder: Path, model_version: str) -> Path:
    path = folder / f"ckpt-{model_version}.pt"
    atomic_write_bytes(path, model_version.encode() * 1000)
    atomic_write_text(path.with_name(path.name + ".json"), f'{{"model_version": "{model_version}"}}')
    return path


def _map(model_version: str, ids: list[str], n_per_image: int = 3) -> SliceMap:
    rng = np.random.default_rng(len(ids))
    n = len(ids) * n_per_image
    return SliceMap(image_ids=np.repeat(ids, n_per_image), slices=np.tile(np.arange(n_per_image), len(ids)),
                    positions=rng.normal(size=(n, 3)), w=rng.normal(size=(n, 4)), xy=rng.normal(size=(n, 2)),
                    model_version=model_version, depths={i: n_per_image for i in ids})


def _publish(ws: Workspace, model_version: str, ids: list[str]) -> MapVersion:
    return ws.publish(_map(model_version, ids), _checkpoint(ws.root.parent, model_version),
                      FakeProjector(model_version))


def _publish_elsewhere(root: str, model_version: str, ready: object = None) -> None:
    """A second process (the training subprocess's part): publish a new model version into ``root``."""
    if ready is not None:
        ready.set()  # type: ignore[attr-defined]
    _publish(Workspace(root), model_version, ["a", "b"])


def _folders(ws: Workspace) -> set[Path]:
    return {p for p in ws.maps_dir.iterdir() if p.is_dir()}


def test_published_versions_are_never_modified(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    published: dict[Path, dict] = {}  # every version folder as it was right after it was made current

    def activated(version: MapVersion) -> MapVersion:
        assert ws.current_version() == version
        published[version.folder] = snapshot(version.folder)
        for folder, files in published.items():  # every activated folder still there is byte-for-byte the same
            if folder.exists():
                assert snapshot(folder) == files, folder
        return version

    first = activated(_publish(ws, "m1", ["a", "b"]))
    # studies added (placed with the parent's projector), then one dropped: each update is a new version
    added = activated(ws.publish_update(ws.load_map().extended(
        ["c"] * 2, [0, 1], np.zeros((2, 3)), np.ones((2, 4)), np.ones((2, 2)), depths={"c": 2}), first))
    assert len(ws.load_map()) == 8 and ws.load_map().model_version == "m1"
    for name in ("checkpoint/ckpt-m1.pt", "projection/projector.npz"):  # the model files are shared, not copied
        assert os.path.samefile(first.folder / name, added.folder / name)
    assert _folders(ws) == {first.folder, added.folder}  # the current one and the one before it
    dropped = activated(ws.publish_update(ws.load_map().without({"a"}), added))
    assert ws.load_map().image_set() == {"b", "c"} and _folders(ws) == {added.folder, dropped.folder}
    assert not first.folder.exists()  # pruned: two versions old

    # a version that has been made current is never written again
    with pytest.raises(WorkspaceError, match="never change"):
        ws.save_map(_map("m1", ["z"]), dropped)

    # a training publishes a new model; an update of the version it replaced is refused and leaves nothing
    second = activated(_publish(ws, "m2", ["a", "b", "c"]))
    with pytest.raises(StaleVersionError):
        ws.publish_update(ws.load_map(dropped).without({"b"}), dropped)
    assert ws.current_version() == second and _folders(ws) == {dropped.folder, second.folder}
    activated(ws.publish_update(ws.load_map().without({"b"}), second))
    assert ws.load_map().model_version == "m2" and ws.load_map().image_set() == {"a", "c"}
    assert len(published) == 5 and sum(f.exists() for f in published) == 2


def test_an_update_whose_parent_is_no_longer_current_is_refused_across_processes(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    parent = _publish(ws, "m1", ["a", "b"])
    update = ws.load_map().without({"a"})
    spawn = multiprocessing.get_context("spawn")
    # the server builds an update; meanwhile the training process publishes a new model
    with ws.new_version("m1") as version:
        ws.save_map(update, version)
        other = spawn.Process(target=_publish_elsewhere, args=(str(ws.root), "m2"))
        other.start()
        other.join(120)
        assert other.exitcode == 0
        assert ws.load_map().model_version == "m2"
        assert version.is_complete()  # the other process's pruning left the folder being built alone
        with pytest.raises(StaleVersionError, match="is current now"):
            ws.activate(version, parent=parent)
    assert not version.folder.exists()  # the refused update is discarded
    assert ws.load_map().model_version == "m2" and ws.load_map().image_set() == {"a", "b"}

    # the parent check and the switch are one step under publish.lock: a publish waits while it is held
    current = ws.current_version()
    ready = spawn.Event()
    other = spawn.Process(target=_publish_elsewhere, args=(str(ws.root), "m3", ready))
    with ws.publish_lock():
        other.start()
        assert ready.wait(120)
        other.join(1.0)
        assert other.is_alive() and ws.current_version() == current  # blocked on the lock
    other.join(120)
    assert other.exitcode == 0 and ws.load_map().model_version == "m3"


def test_a_killed_update_leaves_the_current_version_and_is_pruned_later(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    first = _publish(ws, "m1", ["a", "b"])
    # a process killed while building an update: a folder with links and arrays but no metadata, not locked
    half = MapVersion.in_folder(ws.maps_dir / "20000101-000000-000000000-m1")
    half.checkpoint_dir.mkdir(parents=True)
    os.link(first.checkpoint_dir / "ckpt-m1.pt", half.checkpoint_dir / "ckpt-m1.pt")
    (half.folder / "slice_map.npz").write_bytes(b"partial")
    assert ws.current_version() == first and ws.load_map().model_version == "m1"
    with pytest.raises(WorkspaceError, match="no complete slice map"):
        ws.activate(half)
    second = ws.publish_update(ws.load_map().without({"a"}), first)
    assert _folders(ws) == {first.folder, second.folder}
    assert (first.checkpoint_dir / "ckpt-m1.pt").read_bytes() == b"m1" * 1000


def _full_stamp(ws: Workspace) -> tuple[str, int] | None:
    """What :meth:`Workspace.map_stamp` means: the stamp of :meth:`Workspace.current_version`, read afresh."""
    version = ws.current_version()
    return None if version is None else ws.stamp_of(version)


def test_map_stamp_reads_the_pointer_only_when_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server asks for the stamp at every request: while the pointer file stays the same, the stamp costs a
    few ``stat`` calls and no read of the pointer; every switch (a publish in this process or another, an
    update, a damaged current version, a pointer rewritten by hand) still shows at once."""
    ws = Workspace(tmp_path / "ws")
    reader = Workspace(tmp_path / "ws")          # another object (the server's) over the same folder
    assert reader.map_stamp() is None
    reads = []
    real_read = Workspace._read_pointer
    monkeypatch.setattr(Workspace, "_read_pointer", lambda self: reads.append(1) or real_read(self))

    first = _publish(ws, "v1", ["a"])
    assert reader.map_stamp() == _full_stamp(ws) == ws.stamp_of(first)
    reads.clear()
    for _ in range(5):
        assert reader.map_stamp() == ws.stamp_of(first)
    assert reads == []                           # unchanged pointer: not read again

    # a publish by another process, then an update of its map: each switch gives the new stamp
    process = multiprocessing.get_context("spawn").Process(target=_publish_elsewhere, args=(str(ws.root), "v2"))
    process.start()
    process.join(60)
    assert process.exitcode == 0
    second = ws.current_version()
    assert second != first and reader.map_stamp() == ws.stamp_of(second)
    update = ws.publish_update(ws.load_map().extended(["c"], [0], np.zeros((1, 3)), np.ones((1, 4)),
                                                      np.ones((1, 2))), second)
    assert reader.map_stamp() == ws.stamp_of(update) == _full_stamp(ws)
    reads.clear()
    assert reader.map_stamp() == ws.stamp_of(update) and reads == []

    # the current version damaged by hand (its arrays, then its metadata): the previous one is used, and its
    # stamp is worked out afresh at every call (nothing kept for a damaged pointer)
    update.map_path.rename(update.map_path.with_suffix(".moved"))
    assert reader.map_stamp() == ws.stamp_of(second) == _full_stamp(ws)
    reads.clear()
    assert reader.map_stamp() == ws.stamp_of(second) and reads
    update.map_path.with_suffix(".moved").rename(update.map_path)
    assert reader.map_stamp() == ws.stamp_of(update)
    update.map_meta_path.unlink()
    assert reader.map_stamp() == ws.stamp_of(second) == _full_stamp(ws)

    # a pointer rewritten with other content, or removed: seen at once
    atomic_write_text(ws.pointer_path, "{")  # damaged: rebuilt to name the newest complete version
    assert reader.map_stamp() == ws.stamp_of(second) == _full_stamp(ws)
    ws.pointer_path.unlink()
    for folder in ws.maps_dir.iterdir():
        shutil.rmtree(folder)
    assert reader.map_stamp() is None


def _publish_and_die(root: str, step: str) -> None:
    """A training process killed with SIGKILL at one step of a publish (the test's second process)."""
    import signal

    import ss_stylegan.maps.versions as versions

    def die(*_: object, **__: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    real_write = versions.atomic_write_text
    if step == "folder made":
        versions.MapVersions.save_map = die  # type: ignore[method-assign]
    elif step == "arrays written":
        versions.atomic_write_text = lambda path, text: die() if str(path).endswith("slice_map.json") \
            else real_write(path, text)
    elif step == "map complete":
        versions.MapVersions.activate = die  # type: ignore[method-assign]
    elif step == "pointer switched":
        versions._remove_unless_building = die
    _publish(Workspace(root), "m2", ["a", "b", "c"])


@pytest.mark.parametrize("step", ["folder made", "arrays written", "map complete", "pointer switched"])
def test_kill_9_between_the_steps_of_a_publish(tmp_path: Path, step: str) -> None:
    """A publish killed at any step leaves a workspace that serves a complete version (the old one, or the new
    one once the pointer switched), reports no damage, and is tidied by the next publish."""
    ws = Workspace(tmp_path / "ws")
    first = _publish(ws, "m1", ["a", "b"])
    third = _publish(ws, "m0", ["a"])  # two versions on disk: the current one and the one it replaced
    process = multiprocessing.get_context("spawn").Process(target=_publish_and_die, args=(str(ws.root), step))
    process.start()
    process.join(60)
    assert process.exitcode == -9
    reader = Workspace(ws.root)  # a server starting now
    served = reader.load_map()
    assert served.model_version == ("m2" if step == "pointer switched" else "m0") and reader.problems == []
    assert first.folder.exists() or step == "pointer switched"
    after = _publish(reader, "m3", ["a"])
    assert _folders(reader) == {after.folder, reader.current_version().folder} | (
        {third.folder} if step != "pointer switched" else {served.version.folder})


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
    assert loaded.model_version == "v1" and loaded.errors == {"bad": "cannot read"} and loaded.depths == {"a": 10, "b": 1}
    np.testing.assert_array_equal(loaded.xy, m.xy)
    assert loaded.rows_of("a").tolist() == [1, 0] and MapRows(loaded).get(("b", 0)) == 2
    bigger = loaded.extended(["c"], [4], np.zeros((1, 3)), np.ones((1, 8)), np.ones((1, 2)), depths={"c": 5})
    assert len(bigger) == 4 and bigger.image_set() == {"a", "b", "c"} and bigger.depths["c"] == 5
    loaded.version.map_path.write_bytes(b"truncated")
    with pytest.raises(DamagedVersionError, match="slice_map.npz cannot be read"):
        ws.load_map()


def test_publish_switches_one_pointer_and_survives_an_interrupted_publish(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    first = _publish_map(ws, _one_image_map("v1", 3))
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
        ws.save_map(_one_image_map("v2", 5), second)
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
    version = _publish_map(ws, _one_image_map("v1", 3))
    with pytest.raises(WorkspaceError, match="never change"):
        ws.save_map(_one_image_map("v1", 5), version)
    assert len(ws.load_map()) == 3
    # a block that does not make its version current leaves nothing behind
    with ws.new_version("v1") as unused:
        ws.save_map(_one_image_map("v1", 4), unused)
    assert not unused.folder.exists() and ws.current_version() == version


def _one_image_map(model_version: str, n: int) -> SliceMap:
    """A map of ``n`` slices of one image ``a``."""
    rng = np.random.default_rng(n)
    return SliceMap(image_ids=["a"] * n, slices=range(n), positions=rng.normal(size=(n, 3)),
                    w=rng.normal(size=(n, 4)), xy=rng.normal(size=(n, 2)), model_version=model_version)
