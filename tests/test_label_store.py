"""The slice label store's journal, flags, CSV and class checks (``ss_stylegan.labels``), on real files.

The kill test runs writers in a child process that is killed with SIGKILL mid-stream: every label the child
reported as stored (after ``set`` returned) must be there when the folder is opened again.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from ss_stylegan.data.fingerprint import Fingerprint, Stamp
from ss_stylegan.labels import (
    OrphanedLabelsError,
    SliceLabelStore,
    StudyState,
    csv_cell,
    flag_of,
)

LIB = str(Path(__file__).resolve().parent.parent / "lib")


def _store(folder: Path, **kwargs: object) -> SliceLabelStore:
    return SliceLabelStore(folder, ["normal", "lesion"], lambda image: 50, **kwargs)  # type: ignore[arg-type]


def test_kill_9_loses_no_acknowledged_label(tmp_path: Path) -> None:
    writer = textwrap.dedent(f"""
        import sys, threading
        sys.path.insert(0, {LIB!r})
        from ss_stylegan.labels import SliceLabelStore
        store = SliceLabelStore(sys.argv[1], ["normal", "lesion"], lambda image: 50, compact_every=100)
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
    while n_lines < 1500 and time.monotonic() < deadline:  # kill it mid-stream, journal rotated a few times
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
    assert not lost, f"{len(lost)} acknowledged labels lost or changed, e.g. {list(lost.items())[:3]}"
    assert not list(tmp_path.glob(".journal-*")) and (tmp_path / ".journal.jsonl").stat().st_size == 0


def test_journal_lines_cut_by_a_crash_are_skipped(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.set("a", 1, "normal")
    with open(tmp_path / ".journal.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"op": "set", "record": {"image": "a", "sli')  # a write killed half-way, never acknowledged
    reopened = _store(tmp_path)
    assert reopened.labelled_keys() == {("a", 1): "normal"}


def test_compaction_folds_the_journal_into_image_files(tmp_path: Path) -> None:
    store = _store(tmp_path, compact_every=10)
    for k in range(25):
        store.set(f"img{k % 3}", k, "lesion")
    store.remove("img0", 0)
    store.wait_compaction()
    assert list(tmp_path.glob("img*.json")), "a background compaction ran after 10 changes"
    store.compact()
    snapshots = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in tmp_path.glob("img*.json")}
    assert set(snapshots) == {"img0.json", "img1.json", "img2.json"}
    assert sum(len(v) for v in snapshots.values()) == 24 and not list(tmp_path.glob(".journal-*"))
    assert _store(tmp_path).labelled_keys() == store.labelled_keys()


def test_read_only_store_never_writes(tmp_path: Path) -> None:
    writer = _store(tmp_path)
    writer.set("a", 2, "lesion")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir())
    reader = _store(tmp_path, writable=False)
    assert reader.labelled_keys() == {("a", 2): "lesion"}
    with pytest.raises(RuntimeError, match="read-only"):
        reader.set("a", 3, "normal")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir()) == before


def test_concurrent_writers_share_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        time.sleep(0.01)  # a slow disk: writers queue behind the fsync in flight
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    store = _store(tmp_path)
    threads = [threading.Thread(target=lambda w=w: [store.set(f"i{w}", k, "normal") for k in range(10)])
               for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store) == 80 and len(calls) < 60, len(calls)  # one fsync per write would be 80


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


def test_flags_say_why_a_label_no_longer_fits() -> None:
    then = Fingerprint(Stamp(100, 1, 1, 7), "aaa")
    record = {"image": "a", "slice": 9, "class": "normal", "study": then.to_dict()}
    assert flag_of(record, StudyState(exists=True, n_slices=10, fingerprint=then)) is None
    touched = Fingerprint(Stamp(100, 2, 2, 7), "aaa")
    assert flag_of(record, StudyState(exists=True, n_slices=10, fingerprint=touched)) is None
    assert StudyState(exists=True, fingerprint=Fingerprint(touched.stamp)).needs_hash([record])
    changed = Fingerprint(Stamp(100, 2, 2, 8), "bbb")
    assert "changed since" in flag_of(record, StudyState(exists=True, n_slices=10, fingerprint=changed))
    assert "now has 5 slice(s)" in flag_of(record, StudyState(exists=True, n_slices=5, fingerprint=then))
    assert "cannot be read" in flag_of(record, StudyState(exists=True, error="cut short"))
    assert "no longer in the studies folder" in flag_of(record, StudyState(exists=False))
    legacy = {"image": "a", "slice": 1, "class": "normal"}  # written before fingerprints: judged by range only
    assert flag_of(legacy, StudyState(exists=True, n_slices=10, fingerprint=changed)) is None
