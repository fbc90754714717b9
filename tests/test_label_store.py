"""The slice label store (``ss_stylegan.labelling.label_store``) on real files: durability, migration, exports, flags, CSV.

The kill tests run writers in a child process killed with SIGKILL, mid-stream or at a chosen step of a write:
every label the child reported as stored (after ``set`` returned) must be there when the folder is opened
again. The full-disk test (a real small file system) is in ``test_storage_faults.py``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from ss_stylegan.labelling.batches import BatchWriter
from ss_stylegan.labelling.errors import NotFoundError
from ss_stylegan.labelling.label_store import SliceLabelStore
from ss_stylegan.labelling.label_values import (
    OrphanedLabelsError,
    SliceOutOfRangeError,
    UnknownClassError,
    csv_cell,
    parse_classes,
)
from ss_stylegan.labelling.validation import FieldError
from ss_stylegan.storage.faults import StorageFullError

LIB = str(Path(__file__).resolve().parent.parent / "lib")


def _store(folder: Path, **kwargs: object) -> SliceLabelStore:
    return SliceLabelStore(folder, ["normal", "lesion"], lambda image: 50, **kwargs)  # type: ignore[arg-type]


def test_kill_9_loses_no_acknowledged_label(tmp_path: Path) -> None:
    writer = textwrap.dedent(f"""
        import sys, threading
        sys.path.insert(0, {LIB!r})
        from ss_stylegan.labelling.label_store import SliceLabelStore
        store = SliceLabelStore(sys.argv[1], ["normal", "lesion"], lambda image: 50)
        lock = threading.Lock()
        def write(w):
            for k in range(100000):
                image, s, cls = f"img{{w}}", k % 50, ("normal", "lesion")[(k // 50) % 2]
                store.set(image, s, cls, str(k))
                with lock:
                    print(image, s, k, flush=True)
        for w in range(8):
            threading.Thread(target=write, args=(w,), daemon=True).start()
        threading.Event().wait()
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    acknowledged: dict[tuple[str, int], int] = {}  # (image, slice) -> the write number last acknowledged
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    n_lines = 0
    while n_lines < 1500 and time.monotonic() < deadline:  # kill it mid-stream, exports being written
        image, s, k = proc.stdout.readline().split()
        acknowledged[(image, int(s))] = int(k)
        n_lines += 1
    os.kill(proc.pid, signal.SIGKILL)
    rest = proc.stdout.read()  # lines printed before the kill were acknowledged too
    proc.wait()
    for line in rest.splitlines():
        parts = line.split()
        if len(parts) == 3:
            acknowledged[(parts[0], int(parts[1]))] = int(parts[2])
    reopened = _store(tmp_path)
    stored = {(r["image"], r["slice"]): int(r["user"]) for r in reopened.records()}
    # the stored write is the last acknowledged one or a later one (stored, killed before it was reported)
    lost = {key: k for key, k in acknowledged.items() if stored.get(key, -1) < k}
    assert n_lines == 1500 and not lost, f"{len(lost)} acknowledged labels lost or changed, e.g. {list(lost.items())[:3]}"
    assert reopened.exports.flush() and _exports(tmp_path) == _by_image(reopened)  # exports follow the database
    assert not list(tmp_path.glob(".*.tmp"))


_STEP_KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[1])
    from ss_stylegan.labelling.label_store import SliceLabelStore
    store = SliceLabelStore(sys.argv[2], ["normal", "lesion"], lambda image: 50)
    for k in range(5):
        store.set("a", k, "normal", "before")
    print("acknowledged", flush=True)
    step = sys.argv[3]
    def trace(statement):
        if statement.startswith(step):
            os.kill(os.getpid(), signal.SIGKILL)
    store._conn.set_trace_callback(trace)
    store.set("a", 9, "lesion", "in flight")
""")


@pytest.mark.parametrize("step", ["BEGIN", "INSERT", "COMMIT"])
def test_kill_9_between_the_steps_of_a_write(tmp_path: Path, step: str) -> None:
    """A writer killed as it begins the transaction, after its insert, or as it commits: the store opens,
    every acknowledged label is there, and the label in flight is stored whole or not at all."""
    proc = subprocess.run([sys.executable, "-c", _STEP_KILLER, LIB, str(tmp_path), step], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL and proc.stdout.strip() == "acknowledged", proc.stderr
    keys = _store(tmp_path).labelled_keys()
    assert {("a", k) for k in range(5)} <= set(keys)
    assert set(keys) - {("a", k) for k in range(5)} <= {("a", 9)}
    assert keys.get(("a", 9), "lesion") == "lesion"


def _exports(folder: Path) -> dict[str, list[dict[str, object]]]:
    return {p.name[:-5]: json.loads(p.read_text(encoding="utf-8")) for p in folder.glob("*.json")}


def _by_image(store: SliceLabelStore) -> dict[str, list[dict[str, object]]]:
    return {image: store.records(image) for image in store.images()}


def test_exports_are_the_records_of_each_image(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for k in range(25):
        store.set(f"img{k % 3}", k, "lesion")
    store.remove("img0", 0)
    store.remove("img1", 1)
    for k in (4, 7, 10, 13, 16, 19, 22):
        store.remove("img1", k)
    assert store.exports.flush()
    assert _exports(tmp_path) == _by_image(store) and set(_exports(tmp_path)) == {"img0", "img2"}
    assert _store(tmp_path).labelled_keys() == store.labelled_keys()


LEGACY = Path(__file__).resolve().parent / "data" / "legacy_labels"
"""A label folder written by the journal store this project used before the database (per-image snapshots and
a journal), damaged as a full disk and a crash left such folders: a torn append with the next label appended
onto it, a line of bytes that are not UTF-8, and a last line cut off."""
LEGACY_KEYS = {("study_00", 3): "lesion", ("study_00", 6): "normal", ("study_00", 9): "lesion",
               ("study_01", 1): "normal", ("study_01", 4): "normal", ("study_01", 7): "lesion",
               ("study_01", 10): "normal", ("study_02", 2): "normal", ("study_02", 5): "lesion",
               ("study_02", 8): "normal", ("study_02", 11): "lesion", ("study_03", 5): "lesion",
               ("study_03", 6): "normal"}


def test_a_folder_of_the_journal_store_migrates_losing_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "labels"
    shutil.copytree(LEGACY, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    reader = _store(folder, writable=False)  # a training subprocess before the server's first start
    assert reader.labelled_keys() == LEGACY_KEYS
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # reading changed nothing

    store = _store(folder)
    assert store.labelled_keys() == LEGACY_KEYS  # the label appended onto a torn one (study_03 6) kept
    assert store.get("study_00", 3)["study"]["sha256"] == "ab" * 32  # records keep their study fingerprint
    assert [line.split(":")[0] for line in store.skipped] == [".journal.jsonl line 6"] * 1 + \
        [".journal.jsonl line 7", ".journal.jsonl line 8"]
    assert "kept the 1 complete entry" in store.skipped[0] and "not UTF-8" in store.skipped[1]
    assert (folder / ".journal.jsonl.migrated").read_bytes() == before[".journal.jsonl"]
    assert not (folder / ".journal.jsonl").exists() and (folder / ".labels.sqlite").exists()
    store.set("study_03", 7, "lesion", "after")
    assert store.exports.flush() and _exports(folder) == _by_image(store)
    again = _store(folder)
    assert again.labelled_keys() == {**LEGACY_KEYS, ("study_03", 7): "lesion"} and again.skipped == []


def test_a_damaged_database_is_set_aside_and_rebuilt_from_the_exports(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for k in range(6):
        store.set("a", k, "lesion")
    store.close()
    (tmp_path / ".labels.sqlite").write_bytes(b"this is not a database" * 100)
    reopened = _store(tmp_path)
    assert reopened.labelled_keys() == {("a", k): "lesion" for k in range(6)}
    assert "damaged" in reopened.skipped[0] and list(tmp_path.glob(".labels.sqlite.damaged-*"))
    reopened.set("a", 7, "normal")
    assert len(_store(tmp_path)) == 7


def test_read_only_store_never_writes(tmp_path: Path) -> None:
    writer = _store(tmp_path)
    writer.set("a", 2, "lesion")
    assert writer.exports.flush()
    # the -shm file is SQLite's shared memory (readers take a slot in it), not data
    before = sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in tmp_path.iterdir()
                    if not p.name.endswith("-shm"))
    reader = _store(tmp_path, writable=False)
    assert reader.labelled_keys() == {("a", 2): "lesion"}
    with pytest.raises(RuntimeError, match="read-only"):
        reader.set("a", 3, "normal")
    assert sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in tmp_path.iterdir()
                  if not p.name.endswith("-shm")) == before


def test_concurrent_writers_share_transactions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    groups: list[int] = []
    real = SliceLabelStore._commit

    def slow_commit(self: SliceLabelStore, group: list) -> None:  # type: ignore[type-arg]
        groups.append(len(group))
        time.sleep(0.01)  # a slow disk: writers queue behind the transaction in flight
        real(self, group)

    monkeypatch.setattr(SliceLabelStore, "_commit", slow_commit)
    store = _store(tmp_path)
    threads = [threading.Thread(target=lambda w=w: [store.set(f"i{w}", k, "normal") for k in range(10)])
               for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store) == 80 and sum(groups) == 80 and len(groups) < 60, groups  # one each would be 80
    assert len(_store(tmp_path)) == 80


def test_a_failed_transaction_stores_and_applies_nothing(tmp_path: Path) -> None:
    """SQLite's own page limit makes the database full (SQLITE_FULL, as a full disk does): the write is
    refused with StorageFullError, nothing of it is in memory or on disk, and the next write works."""
    store = _store(tmp_path)
    store.set("a", 0, "normal")
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StorageFullError, match="disk holding the slice labels is full: the label was not stored"):
        for k in range(1, 500):
            store.set(f"img{k}", k % 50, "lesion", "x" * 100 + str(k))
    full = store.labelled_keys()
    assert _store(tmp_path, writable=False).labelled_keys() == full  # memory and disk agree
    store._conn.execute("PRAGMA max_page_count = 1073741823")
    store.set("b", 1, "lesion")
    assert _store(tmp_path).labelled_keys() == {**full, ("b", 1): "lesion"}
    assert store.faults.failing() == {}


def test_classes_that_would_orphan_labels_refuse_to_open(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.set("a", 1, "lesion")
    store.set("a", 2, "normal")
    with pytest.raises(OrphanedLabelsError, match=r"1 stored slice label.*\['lesion'\].*a slice 1 \(lesion\)"
                                                  r".*classes normal,tumour,lesion"):
        SliceLabelStore(tmp_path, ["normal", "tumour"], lambda image: 50)
    assert _store(tmp_path).labelled_keys() == {("a", 1): "lesion", ("a", 2): "normal"}  # nothing changed


def test_csv_cells_cannot_start_a_formula(tmp_path: Path) -> None:
    store = SliceLabelStore(tmp_path, ["normal", "lesion"], lambda image: 5)
    store.set("=cmd|' -C calc'!A0", 1, "normal", "=HYPERLINK(\"http://x\")")
    store.set("b", 0, "lesion", "+1")
    store.set("b", 1, "lesion", "@SUM(A1)")
    store.set("b", 2, "lesion", "-2")
    cells = [c for row in csv.reader(io.StringIO(store.to_csv())) for c in row]
    assert not [c for c in cells if c[:1] in "=+-@"], cells
    assert "'=HYPERLINK(\"http://x\")" in cells and csv_cell("normal") == "normal" and csv_cell(3) == 3


def test_a_batch_that_cannot_be_written_is_tried_again() -> None:
    """The exports' and the label-count mirror's background writer: a reader does not wait for a batch that keeps
    failing (a full disk), and the batch is written once it can be."""

    class Flaky(BatchWriter):
        def __init__(self) -> None:
            super().__init__("flaky", delay_s=0.0, retry_s=0.05)
            self.failing = True
            self.written: list[str] = []

        def _write(self, batch: set[str]) -> set[str]:
            if self.failing:
                return set(batch)
            self.written += sorted(batch)
            return set()

    writer = Flaky()
    writer.changed("a", "b")
    t0 = time.monotonic()
    assert not writer.flush(timeout_s=20.0) and time.monotonic() - t0 < 10.0
    writer.failing = False
    deadline = time.monotonic() + 20.0
    while writer.written != ["a", "b"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer.written == ["a", "b"] and writer.flush()


@pytest.mark.parametrize("damage", ["garbage appended", "cut short"])
def test_a_damaged_write_ahead_log_opens_with_every_label_committed_before_it(tmp_path: Path, damage: str) -> None:
    """The database's write-ahead log after a kill, then damaged on disk: the store opens and keeps every label
    whose frames are whole (SQLite checks each frame's checksum and stops at the first bad one)."""
    proc = subprocess.run([sys.executable, "-c", _STEP_KILLER, LIB, str(tmp_path), "COMMIT"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    wal = tmp_path / ".labels.sqlite-wal"
    data = wal.read_bytes()
    assert len(data) > 4096  # the five acknowledged labels are still in the log, not yet in the database
    if damage == "garbage appended":
        wal.write_bytes(data + b"\xff\x00 not a frame " * 300)
        expected = {("a", k) for k in range(5)}
    else:
        wal.write_bytes(data[: len(data) - 100])  # the last frame cut: the last transaction is lost with it
        expected = {("a", k) for k in range(4)}
    store = _store(tmp_path)
    assert expected <= set(store.labelled_keys()) <= {("a", k) for k in range(5)}
    store.set("a", 7, "lesion")
    assert ("a", 7) in _store(tmp_path).labelled_keys()


DEPTHS = {"a": 10, "b": 1}


def _store_of_depths(folder: Path) -> SliceLabelStore:
    """A store whose studies are ``a`` (10 slices) and ``b`` (1 slice); any other image is not in the folder."""
    return SliceLabelStore(folder, ["normal", "lesion"], DEPTHS.get)


def test_label_store_round_trip_and_csv(tmp_path: Path) -> None:
    store = _store_of_depths(tmp_path)
    store.set("a", 3, "lesion", "alice")
    store.set("a", 3, "normal", "bob")  # change
    store.set("b", 0, "lesion")
    assert [(r["image"], r["slice"], r["class"]) for r in store.records()] == [("a", 3, "normal"), ("b", 0, "lesion")]
    reopened = _store_of_depths(tmp_path)
    assert reopened.labelled_keys() == {("a", 3): "normal", ("b", 0): "lesion"}
    rows = list(csv.DictReader(io.StringIO(reopened.to_csv())))
    assert [(r["image"], r["slice"], r["class"], r["user"]) for r in rows] == [("a", "3", "normal", "bob"),
                                                                             ("b", "0", "lesion", "")]
    assert reopened.remove("b", 0) and not reopened.remove("b", 0)
    assert reopened.exports.flush() and not (tmp_path / "b.json").exists()  # the export follows the database
    assert len(_store_of_depths(tmp_path)) == 1


@pytest.mark.parametrize(
    ("image", "slice_index", "cls", "error", "message"),
    [
        ("zzz", 0, "normal", NotFoundError, "not in the datastore"),
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
        _store_of_depths(tmp_path).set(image, slice_index, cls)


def test_label_store_concurrent_writers_keep_every_label(tmp_path: Path) -> None:
    store = _store_of_depths(tmp_path)
    threads = [threading.Thread(target=store.set, args=("a", k, "lesion", f"user{k}")) for k in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with sqlite3.connect(tmp_path / ".labels.sqlite") as db:  # every one in the store of record
        assert db.execute("SELECT COUNT(*) FROM labels WHERE image = 'a'").fetchone() == (10,)
    assert len(_store_of_depths(tmp_path)) == 10
    assert store.exports.flush() and len(json.loads((tmp_path / "a.json").read_text(encoding="utf-8"))) == 10


def test_parse_classes() -> None:
    assert parse_classes(" normal , lesion ") == ["normal", "lesion"]
    with pytest.raises(ValueError, match="at least two"):
        parse_classes("normal")
