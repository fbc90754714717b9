"""Class labels of individual slices: validation, storage, listing, flags and CSV export.

A label record is ``{"image", "slice", "class", "user", "timestamp"}`` plus ``"study"``, the fingerprint of the
study file when it was labelled (stamp and SHA-256, :mod:`ss_stylegan.data.fingerprint`; absent in records
written before it existed), so a label whose study changed later is flagged instead of silently reused.

Storage (one folder, e.g. MONAI Label's ``<studies>/labels/slice_class/``):

- ``<image_id>.json``: every record of one image (a *snapshot*), written atomically;
- ``.journal.jsonl``: every change since the snapshots were written, one JSON line per change, appended
  and made durable by a *group commit*: a write returns once an ``fdatasync`` that covers its line has
  finished, and one ``fdatasync`` covers every line appended before it started, so concurrent writers
  share it instead of queueing behind one fsync each;
- ``.journal-<n>.jsonl``: a journal being folded into the snapshots by a background thread (every
  ``compact_every`` changes). It is deleted only after the snapshots it changed are durable.

Loading reads the snapshots, then replays the journals in order (replaying is idempotent). A store opened
for writing (one process: the server) then folds them in and appends to a fresh journal; other processes
(MONAI Label's training and batch subprocesses) open it read-only and never change a file. A server killed
at any moment (``kill -9``) loses no acknowledged label; a journal line cut off by a crash mid-write was
never acknowledged and is skipped.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ss_stylegan.atomic import atomic_write_text, fsync_dir
from ss_stylegan.data.fingerprint import Fingerprint
from ss_stylegan.validation import identifier, inside, integer, text

log = logging.getLogger(__name__)

CSV_FIELDS = ("image", "slice", "class", "user", "timestamp")
MAX_USER_CHARS = 128
MAX_CLASS_CHARS = 64
JOURNAL = ".journal.jsonl"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class LabelError(ValueError):
    """A label request is invalid; the message says what was wrong and what is accepted."""


class UnknownImageError(LabelError):
    """The image id is not in the datastore."""


class UnreadableImageError(LabelError):
    """The image is in the datastore but cannot be read, so its slices are unknown."""


class UnknownClassError(LabelError):
    """The class name is not one of the configured classes."""


class SliceOutOfRangeError(LabelError):
    """The slice index is not a slice of that image."""


class OrphanedLabelsError(LabelError):
    """Stored labels use classes that are not configured; starting would orphan them."""


def parse_classes(text: str | Iterable[str]) -> list[str]:
    """Parse ``"normal,lesion"`` (or a list) into distinct, non-empty class names, order kept.

    Raises:
        LabelError: fewer than two classes, an empty name or a duplicate.
    """
    names = [c.strip() for c in (text.split(",") if isinstance(text, str) else text)]
    if any(not n for n in names):
        raise LabelError(f"class names must be non-empty, got {names!r} (write e.g. 'normal,lesion')")
    if len(set(names)) != len(names):
        raise LabelError(f"class names must be distinct, got {names!r}")
    if len(names) < 2:
        raise LabelError(f"at least two classes are needed, got {names!r} (write e.g. 'normal,lesion')")
    return names


def csv_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run as a formula: text starting with ``= + - @`` (or a tab /
    carriage return) gets a leading apostrophe, as OWASP recommends against CSV injection."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


@dataclasses.dataclass(frozen=True)
class StudyState:
    """What the datastore holds for an image id now, to judge its labels by.

    Attributes:
        exists: the study is in the studies folder.
        error: why it cannot be read (None when it can).
        n_slices: its number of slices (None when unknown).
        fingerprint: its file's fingerprint now; ``sha256`` may be None when no label needed a hash (every
            label's recorded stamp matches the current one).
    """

    exists: bool
    error: str | None = None
    n_slices: int | None = None
    fingerprint: Fingerprint | None = None

    def needs_hash(self, records: Iterable[dict[str, Any]]) -> bool:
        """Whether judging ``records`` needs the study's content hash (some recorded stamp differs)."""
        return self.fingerprint is not None and any(
            r.get("study") and Fingerprint.from_dict(r["study"]).stamp != self.fingerprint.stamp for r in records)


def flag_of(record: dict[str, Any], state: StudyState) -> str | None:
    """Why a stored label no longer fits its study (None when it does). Labels are never moved or
    dropped because of a flag; a flagged label is left out of suggestions and classification until it
    is stored again (confirmed) or removed."""
    if not state.exists:
        return "the study is no longer in the studies folder"
    if state.error:
        return f"the study cannot be read now: {state.error}"
    if state.n_slices is not None and record["slice"] >= state.n_slices:
        return f"the study now has {state.n_slices} slice(s); slice {record['slice']} no longer exists"
    if record.get("study") and state.fingerprint is not None:
        then, now = Fingerprint.from_dict(record["study"]), state.fingerprint
        if then.stamp != now.stamp and then.sha256 and now.sha256 and then.sha256 != now.sha256:
            return ("the study file changed since this slice was labelled; check the slice and store its "
                    "label again (PUT /slicelabels/) or remove it")
    return None


class SliceLabelStore:
    """Thread-safe store of slice class labels (see the module docstring for the files).

    Args:
        folder: directory of the label files (created when missing).
        classes: valid class names.
        n_slices: callable giving the number of slices of an image id, or None for an unknown image;
            it may raise :class:`UnreadableImageError`. Used to refuse unknown images and slice indices
            out of range.
        compact_every: journal lines after which the journal is folded into the snapshots.
        writable: open for writing now (else read-only until :meth:`open_for_writing`).

    Raises:
        OrphanedLabelsError: stored labels use a class that is not in ``classes``.
    """

    def __init__(self, folder: str | Path, classes: list[str], n_slices: Callable[[str], int | None],
                 compact_every: int = 2000, writable: bool = True) -> None:
        self.folder = Path(folder)
        self.classes = list(classes)
        self.n_slices = n_slices
        self.compact_every = int(compact_every)
        self._lock = threading.RLock()          # labels in memory + journal appends
        self._sync_lock = threading.Lock()      # one fdatasync at a time (the group commit)
        self._compacting = threading.Lock()     # one compaction at a time
        self._labels: dict[str, dict[int, dict[str, Any]]] = {}
        self._dirty: set[str] = set()           # images changed since the last rotation
        self._written = 0                       # journal lines appended
        self._synced = 0                        # journal lines known durable
        self._since_rotation = 0
        self._compactor: threading.Thread | None = None
        self.version = 0                        # bumped at every change (for caches of derived data)
        self._fd: int | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        self._load(writing=False)
        self._check_classes()
        if writable:
            self.open_for_writing()

    def open_for_writing(self) -> None:
        """Fold the journals left by an earlier run into the snapshots and start a fresh journal. Only one
        process may write a label folder (the server); calling this again does nothing."""
        with self._sync_lock, self._lock:
            if self._fd is not None:
                return
            self._labels.clear()
            self._dirty.clear()
            journals = self._load(writing=True)
            if journals:
                self._write_snapshots({img: self._labels.get(img, {}) for img in self._dirty})
                for journal in journals:
                    journal.unlink()
                fsync_dir(self.folder)
            self._dirty.clear()
            self._fd = self._open_journal()

    # -- persistence ------------------------------------------------------------------------------
    def _path(self, image_id: str) -> Path:
        return inside(self.folder, f"{image_id}.json", field="image")

    def _journals(self) -> list[Path]:
        """Rotated journals in order, then the current one (those that exist)."""
        rotated = sorted(self.folder.glob(".journal-*.jsonl"))
        current = self.folder / JOURNAL
        return rotated + ([current] if current.exists() else [])

    def _load(self, writing: bool) -> list[Path]:
        """Read the snapshots and replay the journals into memory; return the journals read. A journal that
        disappears meanwhile (folded in by the writing process) means the snapshots changed: read again.
        An unreadable snapshot is moved aside when ``writing`` (else only reported)."""
        for _ in range(5):
            self._labels.clear()
            self._dirty.clear()
            journals = self._journals()
            for path in sorted(self.folder.glob("*.json")):
                image_id = path.name[: -len(".json")]
                try:
                    records = json.loads(path.read_text(encoding="utf-8"))
                    self._labels[image_id] = {int(r["slice"]): dict(r) for r in records}
                except FileNotFoundError:
                    continue
                except (ValueError, KeyError, TypeError) as err:
                    if not writing:
                        log.error("label file %s is unreadable (%s); ignored", path, err)
                        continue
                    aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
                    os.replace(path, aside)
                    log.error("label file %s is unreadable (%s); moved it to %s", path, err, aside.name)
            try:
                for journal in journals:
                    self._replay(journal)
            except FileNotFoundError:
                continue
            if self._journals() != journals:  # a compaction started meanwhile
                continue
            return journals
        raise OSError(f"the labels in {self.folder} kept changing while they were read; try again")

    def _replay(self, journal: Path) -> None:
        for line_no, line in enumerate(journal.read_text(encoding="utf-8").splitlines(), 1):
            try:
                self._apply(json.loads(line))
            except (ValueError, KeyError, TypeError) as err:
                log.warning("%s line %d is incomplete (%s): a write cut off by a crash, never acknowledged; "
                            "skipped", journal.name, line_no, err)

    def _apply(self, entry: dict[str, Any]) -> None:
        if entry["op"] == "set":
            record = dict(entry["record"])
            image = str(record["image"])
            self._labels.setdefault(image, {})[int(record["slice"])] = record
        elif entry["op"] == "remove":
            image = str(entry["image"])
            self._labels.get(image, {}).pop(int(entry["slice"]), None)
            if not self._labels.get(image, True):
                del self._labels[image]
        else:
            raise ValueError(f"unknown journal operation {entry['op']!r}")
        self._dirty.add(image)

    def _check_classes(self) -> None:
        orphans = [r for recs in self._labels.values() for r in recs.values() if r.get("class") not in self.classes]
        if not orphans:
            return
        orphans.sort(key=lambda r: (r["image"], r["slice"]))
        by_class: dict[str, int] = {}
        for r in orphans:
            by_class[str(r.get("class"))] = by_class.get(str(r.get("class")), 0) + 1
        shown = ", ".join(f"{r['image']} slice {r['slice']} ({r.get('class')})" for r in orphans[:10])
        more = f" and {len(orphans) - 10} more" if len(orphans) > 10 else ""
        missing = sorted(by_class)
        raise OrphanedLabelsError(
            f"{len(orphans)} stored slice label(s) use class(es) {missing} that are not among the configured "
            f"classes {self.classes}: {shown}{more}. Nothing was changed. To proceed, either keep those "
            f"classes (e.g. classes {','.join(self.classes + [c for c in missing if c not in self.classes])}), "
            "or start once with the old classes, export the labels (GET /slicelabels/export.csv) and remove or "
            "relabel the affected slices (DELETE or PUT /slicelabels/) before changing the classes"
        )

    def _open_journal(self) -> int:
        path = self.folder / JOURNAL
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if created:
            fsync_dir(self.folder)
        return fd

    def _append(self, entry: dict[str, Any]) -> int:
        """Append one change to the journal (caller holds ``_lock``); return its sequence number."""
        if self._fd is None:
            raise RuntimeError(f"the labels in {self.folder} are open read-only in this process")
        data = (json.dumps(entry, separators=(",", ":")) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self._written += 1
        self._since_rotation += 1
        return self._written

    def _commit(self, seq: int) -> None:
        """Return once journal line ``seq`` is durable (group commit: one fdatasync serves many writers)."""
        with self._sync_lock:
            if self._synced >= seq:
                return
            with self._lock:
                target, fd = self._written, self._fd
            os.fdatasync(fd)
            self._synced = target
        if self._since_rotation >= self.compact_every:
            self._start_compaction()

    def _start_compaction(self) -> None:
        """Rotate the journal and fold it into the snapshots in a background thread."""
        if not self._compacting.acquire(blocking=False):
            return
        try:
            with self._sync_lock, self._lock:
                os.fdatasync(self._fd)
                self._synced = self._written
                os.close(self._fd)
                rotated = self.folder / f".journal-{time.time_ns():020d}.jsonl"
                os.replace(self.folder / JOURNAL, rotated)
                self._fd = self._open_journal()
                snapshot = {img: {s: dict(r) for s, r in self._labels.get(img, {}).items()} for img in self._dirty}
                self._dirty.clear()
                self._since_rotation = 0
        except BaseException:
            self._compacting.release()
            raise
        self._compactor = threading.Thread(target=self._compact, args=(snapshot, rotated),
                                           name="slice-labels-compaction", daemon=True)
        self._compactor.start()

    def _compact(self, snapshot: dict[str, dict[int, dict[str, Any]]], rotated: Path) -> None:
        try:
            self._write_snapshots(snapshot)
            rotated.unlink()
            fsync_dir(self.folder)
        except Exception:  # the rotated journal stays and is replayed at the next start
            log.exception("folding %s into the label snapshots failed; it is kept and replayed at start-up",
                          rotated.name)
        finally:
            self._compacting.release()

    def compact(self, timeout_s: float = 30.0) -> None:
        """Fold every change so far into the image files now (waits for a compaction already running)."""
        self.wait_compaction(timeout_s)
        with self._compacting:  # the running one has released it
            pass
        self._start_compaction()
        self.wait_compaction(timeout_s)

    def wait_compaction(self, timeout_s: float = 30.0) -> None:
        """Wait for a running background compaction (tests and tools)."""
        thread = self._compactor
        if thread is not None:
            thread.join(timeout_s)

    def _write_snapshots(self, snapshot: dict[str, dict[int, dict[str, Any]]]) -> None:
        for image_id, recs in snapshot.items():
            path = self._path(image_id)
            if recs:
                atomic_write_text(path, json.dumps([recs[s] for s in sorted(recs)], indent=1))
            elif path.exists():
                path.unlink()

    # -- validation -------------------------------------------------------------------------------
    def validate(self, image_id: Any, slice_index: Any, class_name: Any = None, user: Any = "") -> None:
        """Raise a :class:`LabelError` subclass, or a :class:`~ss_stylegan.validation.FieldError` for a value
        of the wrong type or form, when the label is not acceptable."""
        identifier(image_id, "image")
        integer(slice_index, "slice", minimum=0)
        text(user, "user", MAX_USER_CHARS)
        if class_name is not None:
            text(class_name, "class", MAX_CLASS_CHARS)
        count = self.n_slices(image_id)
        if count is None:
            raise UnknownImageError(f"image {image_id!r} is not in the datastore; list images with GET /datastore/")
        if not slice_index < count:
            raise SliceOutOfRangeError(
                f"slice {slice_index} is out of range for image {image_id!r}: it has {count} slice(s), "
                f"valid indices are 0..{count - 1}"
            )
        if class_name is not None and class_name not in self.classes:
            raise UnknownClassError(f"unknown class {class_name!r}; valid classes are {self.classes}")

    # -- public API -------------------------------------------------------------------------------
    def set(self, image_id: str, slice_index: int, class_name: str, user: str = "",
            study: Fingerprint | None = None) -> dict[str, Any]:
        """Store (or replace) the label of one slice; return the stored record once it is durable.

        Args:
            study: the study file's fingerprint now, so a later change of the file flags the label.
        """
        self.validate(image_id, slice_index, class_name, user)
        record: dict[str, Any] = {
            "image": image_id,
            "slice": slice_index,
            "class": class_name,
            "user": user,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if study is not None:
            record["study"] = study.to_dict()
        with self._lock:
            seq = self._append({"op": "set", "record": record})
            self.version += 1
            self._labels.setdefault(image_id, {})[slice_index] = record
            self._dirty.add(image_id)
        self._commit(seq)
        log.info("label %s[%d] = %s by %s", image_id, slice_index, class_name, user)
        return dict(record)

    def remove(self, image_id: str, slice_index: int) -> bool:
        """Remove the label of one slice; return whether there was one (durable when this returns)."""
        with self._lock:
            if int(slice_index) not in self._labels.get(image_id, {}):
                return False
            seq = self._append({"op": "remove", "image": image_id, "slice": int(slice_index)})
            del self._labels[image_id][int(slice_index)]
            if not self._labels[image_id]:
                del self._labels[image_id]
            self._dirty.add(image_id)
            self.version += 1
        self._commit(seq)
        return True

    def get(self, image_id: str, slice_index: int) -> dict[str, Any] | None:
        with self._lock:
            record = self._labels.get(image_id, {}).get(int(slice_index))
            return dict(record) if record else None

    def records(self, image_id: str | None = None) -> list[dict[str, Any]]:
        """All records (of one image when given), sorted by image then slice."""
        with self._lock:
            images = [image_id] if image_id is not None else sorted(self._labels)
            return [
                dict(r)
                for img in images
                for _, r in sorted(self._labels.get(img, {}).items())
            ]

    def images(self) -> list[str]:
        """Image ids with at least one label."""
        with self._lock:
            return sorted(self._labels)

    def labelled_keys(self) -> dict[tuple[str, int], str]:
        """``{(image_id, slice): class}`` for every labelled slice."""
        with self._lock:
            return {(img, s): r["class"] for img, recs in self._labels.items() for s, r in recs.items()}

    def counts(self, image_id: str) -> dict[str, int]:
        """Number of labelled slices per class in one image."""
        out: dict[str, int] = {}
        for rec in self.records(image_id):
            out[rec["class"]] = out.get(rec["class"], 0) + 1
        return out

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._labels.values())

    def to_csv(self, records: Iterable[dict[str, Any]] | None = None) -> str:
        """CSV text with header ``image,slice,class,user,timestamp``; every cell is neutralised against
        spreadsheet formulas (:func:`csv_cell`)."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for rec in self.records() if records is None else records:
            writer.writerow({k: csv_cell(rec.get(k, "")) for k in CSV_FIELDS})
        return buf.getvalue()
