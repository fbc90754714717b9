"""Class labels of individual slices: validation, storage, listing, flags and CSV export.

A label record is ``{"image", "slice", "class", "user", "timestamp"}`` plus ``"study"``, the fingerprint of the
study file when it was labelled (stamp and SHA-256, :mod:`ss_stylegan.data.fingerprint`; absent in records
written before it existed), so a label whose study changed later is flagged instead of silently reused.

Storage (one folder, e.g. MONAI Label's ``<studies>/labels/slice_class/``):

- ``.labels.sqlite``: the store of record, an SQLite database in WAL mode with ``synchronous=FULL``: a write
  returns once its transaction is committed, and a committed transaction survives a crash or a power loss.
  Concurrent writers share one transaction (a *group commit*), so they share its fsync instead of queueing
  behind one each. A full disk is a clean ``SQLITE_FULL``: the transaction is rolled back, nothing of it is
  stored, and its writers get :class:`~ss_stylegan.storage.faults.StorageFullError`.
- ``<image_id>.json``: every record of one image, an *export* for MONAI Label written from the database
  shortly after each change (:class:`~ss_stylegan.labelling.label_files.LabelExports`).

A folder written before the database (per-image snapshots plus ``.journal*.jsonl``) is moved into it the
first time a server opens it for writing, losing nothing; damaged journal lines are skipped and reported
(:attr:`SliceLabelStore.skipped`). A damaged database is set aside and rebuilt from the per-image files.
The server is the one process that writes; other processes (MONAI Label's training and batch subprocesses)
open the store read-only and never change a file.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ss_stylegan.data.fingerprint import Fingerprint
from ss_stylegan.labelling.errors import NotFoundError
from ss_stylegan.labelling.label_files import (
    LabelExports,
    Labels,
    legacy_journals,
    read_label_files,
)
from ss_stylegan.labelling.label_values import (
    CSV_FIELDS,
    MAX_CLASS_CHARS,
    MAX_USER_CHARS,
    OrphanedLabelsError,
    SliceOutOfRangeError,
    UnknownClassError,
    csv_cell,
)
from ss_stylegan.labelling.validation import identifier, integer, text
from ss_stylegan.storage.atomic import fsync_dir
from ss_stylegan.storage.faults import (
    FaultEpisodes,
    StorageError,
    StorageFullError,
    is_disk_full,
)

log = logging.getLogger(__name__)

DATABASE = ".labels.sqlite"
WAL_PAGES = 64  # pages of the database's write-ahead log before it is checkpointed into the database
def _storage_error(err: sqlite3.Error, n_changes: int) -> StorageError:
    """The error a writer gets when its group's transaction failed (nothing of it was stored)."""
    what = f"the label was not stored (nor {n_changes - 1} other change(s) committed with it)" if n_changes > 1 \
        else "the label was not stored"
    if is_disk_full(err):
        return StorageFullError(errno.ENOSPC, f"the disk holding the slice labels is full: {what}. Free some space "
                                              "on it and send the label again")
    return StorageError(errno.EIO, f"the slice label database could not be written ({err}): {what}. Check the "
                                   "disk holding the labels and send the label again")


class _Change:
    """One label change waiting for its transaction (see :meth:`SliceLabelStore._submit`)."""

    __slots__ = ("op", "image", "slice", "record", "existed", "done", "error")

    def __init__(self, op: str, image: str, slice_index: int, record: dict[str, Any] | None = None) -> None:
        self.op, self.image, self.slice, self.record = op, image, slice_index, record
        self.existed = False
        self.done = False
        self.error: BaseException | None = None


class SliceLabelStore:
    """Thread-safe store of slice class labels (see the module docstring for the files).

    Args:
        folder: directory of the label files (created when missing).
        classes: valid class names.
        n_slices: callable giving the number of slices of an image id, or None for an unknown image;
            it may raise :class:`UnreadableImageError`. Used to refuse unknown images and slice indices
            out of range.
        writable: open for writing now (else read-only until :meth:`open_for_writing`).

    Raises:
        OrphanedLabelsError: stored labels use a class that is not in ``classes``.
    """

    def __init__(self, folder: str | Path, classes: list[str], n_slices: Callable[[str], int | None],
                 writable: bool = True) -> None:
        self.folder = Path(folder)
        self.classes = list(classes)
        self.n_slices = n_slices
        self.db_path = self.folder / DATABASE
        self._lock = threading.RLock()          # the labels in memory
        self._db_lock = threading.Lock()        # the connection; held by the writer committing a group
        self._queue_lock = threading.Lock()
        self._queue: list[_Change] = []
        self._labels: Labels = {}
        self._conn: sqlite3.Connection | None = None
        self._from_db = False                   # self._labels was read from the database (not from files)
        self.version = 0                        # bumped at every change (for caches of derived data)
        self.skipped: list[str] = []            # what opening skipped or repaired, for /info/
        self.faults = FaultEpisodes(log)
        self.exports = LabelExports(self.folder, self.records, self.faults)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._load_read_only()
        self._check_classes()
        if writable:
            self.open_for_writing()

    # -- persistence ------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a committed label survives a crash or a power loss
            # a short write-ahead log, cut back after each checkpoint: on a nearly full disk the log itself
            # must not be what fills it (SQLite's defaults let it grow to 4 MiB and keep that size)
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit={WAL_PAGES * 4096}")
            conn.execute("CREATE TABLE IF NOT EXISTS labels (image TEXT NOT NULL, slice INTEGER NOT NULL, "
                         "record TEXT NOT NULL, PRIMARY KEY (image, slice)) WITHOUT ROWID")
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _read_db(conn: sqlite3.Connection) -> Labels:
        rows = conn.execute("SELECT image, slice, record FROM labels").fetchall()
        # one parse of all records (a million separate json.loads calls took four times as long)
        records = json.loads("[" + ",".join(row[2] for row in rows) + "]")
        labels: Labels = {}
        for (image, slice_index, _), record in zip(rows, records):
            labels.setdefault(image, {})[int(slice_index)] = record
        return labels

    def _load_read_only(self) -> None:
        """Read every label without changing a file: from the database when there is one, else from the
        files of a folder written before it (see :mod:`~ss_stylegan.labelling.label_files`)."""
        if self.db_path.exists():
            try:
                conn = sqlite3.connect(f"{self.db_path.as_uri()}?mode=ro", uri=True, timeout=30.0)
                try:
                    migrated = conn.execute("SELECT value FROM meta WHERE key = 'migrated'").fetchone()
                    if migrated is not None:
                        self._labels = self._read_db(conn)
                        self._from_db = True
                        return
                finally:
                    conn.close()
            except sqlite3.Error as err:
                log.error("the label database %s cannot be read (%s); reading the label files", self.db_path, err)
        self._labels, self.skipped = read_label_files(self.folder)

    def open_for_writing(self) -> None:
        """Open the database for writing: create it, or move the labels of a folder written before it into it
        (once, losing nothing), or set a damaged one aside and rebuild it from the label files. Only one
        process may write a label folder (the server); calling this again does nothing."""
        with self._db_lock:
            if self._conn is not None:
                return
            notes: list[str] = []
            try:
                conn = self._open_or_migrate(notes)
            except sqlite3.DatabaseError as err:  # not a database, malformed: keep it for inspection
                if is_disk_full(err):
                    raise StorageFullError(errno.ENOSPC, f"cannot open the label database {self.db_path}: the "
                                                         "disk is full; free some space and start again") from err
                aside = self.db_path.with_name(f"{DATABASE}.damaged-{int(time.time())}")
                for suffix in ("", "-wal", "-shm"):
                    source = Path(f"{self.db_path}{suffix}")
                    if source.exists():
                        os.replace(source, Path(f"{aside}{suffix}"))
                notes.append(f"{DATABASE}: damaged ({err}); moved to {aside.name} and rebuilt from the "
                                    "per-image label files (labels of the last seconds before the damage may "
                                    "be missing: check them)")
                log.error("the label database %s is damaged (%s); moved it to %s and rebuilt it from the label "
                          "files", self.db_path, err, aside.name)
                conn = self._open_or_migrate(notes)
            # labels read from the database by this process are current: only this process writes it
            labels = self._labels if self._from_db and not notes else self._read_db(conn)
            self.skipped = notes
            with self._lock:
                self._labels = labels
                self.version += 1
            self._conn = conn
        self._check_classes()
        self.exports.changed(*labels)
        self.exports.remove_stale(set(labels))

    def _open_or_migrate(self, notes: list[str]) -> sqlite3.Connection:
        """A writable connection to a database that holds every label of the folder; what a migration
        skipped is added to ``notes``."""
        conn = self._connect()
        try:
            if conn.execute("SELECT value FROM meta WHERE key = 'migrated'").fetchone() is None:
                notes += self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> list[str]:
        """Copy the labels of the folder's files into the database in one transaction, then set the old
        journals aside (renamed ``*.migrated``: kept, never read again); return what was skipped."""
        labels, skipped = read_label_files(self.folder, set_aside=True)
        for line in skipped:
            log.warning("labels in %s: skipped %s", self.folder, line)
        rows = [(image, s, json.dumps(r, separators=(",", ":"))) for image, recs in labels.items()
                for s, r in recs.items()]
        journals = legacy_journals(self.folder)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR REPLACE INTO labels (image, slice, record) VALUES (?, ?, ?)", rows)
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('migrated', ?)",
                         (json.dumps({"time": time.time(), "labels": len(rows),
                                      "journals": [p.name for p in journals], "skipped": skipped}),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        for journal in journals:
            os.replace(journal, journal.with_name(journal.name + ".migrated"))
        fsync_dir(self.folder)
        if rows or journals:
            log.warning("moved %d slice label(s) of %s into the label database %s", len(rows), self.folder,
                        self.db_path.name)
        return skipped

    def close(self) -> None:
        """Write the exports and close the database (tests and tools; a server just stops)."""
        self.exports.flush()
        with self._db_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _submit(self, change: _Change) -> _Change:
        """Make ``change`` durable, together with every change other threads queued meanwhile (a group
        commit: one transaction and one fsync serve them all), then apply it in memory. On failure nothing of
        the group is stored or applied, and each of its writers gets the error."""
        if self._conn is None:
            raise RuntimeError(f"the labels in {self.folder} are open read-only in this process")
        with self._queue_lock:
            self._queue.append(change)
        with self._db_lock:
            if not change.done:
                with self._queue_lock:
                    group, self._queue = self._queue, []
                self._commit(group)
        if change.error is not None:
            raise change.error
        return change

    def _commit(self, group: list[_Change]) -> None:
        conn = self._conn
        assert conn is not None
        what = f"storing slice labels in {self.db_path}"
        try:
            conn.execute("BEGIN IMMEDIATE")
            for c in group:
                if c.op == "set":
                    conn.execute("INSERT OR REPLACE INTO labels (image, slice, record) VALUES (?, ?, ?)",
                                 (c.image, c.slice, json.dumps(c.record, separators=(",", ":"))))
                else:
                    c.existed = conn.execute("DELETE FROM labels WHERE image = ? AND slice = ?",
                                             (c.image, c.slice)).rowcount > 0
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self.faults.failed(what, err)
            if is_disk_full(err):  # give the log's space back to the database, so that space freed elsewhere
                try:               # is enough to write again
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass
            error = _storage_error(err, len(group))
            for c in group:
                c.error, c.done = error, True
            return
        self.faults.recovered(what)
        with self._lock:
            for c in group:
                if c.op == "set":
                    self._labels.setdefault(c.image, {})[c.slice] = c.record  # type: ignore[assignment]
                else:
                    self._labels.get(c.image, {}).pop(c.slice, None)
                    if not self._labels.get(c.image, True):
                        del self._labels[c.image]
                self.version += 1
        for c in group:
            c.done = True
        self.exports.changed(*{c.image for c in group})

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

    # -- validation -------------------------------------------------------------------------------
    def validate(self, image_id: Any, slice_index: Any, class_name: Any = None, user: Any = "") -> None:
        """Raise a :class:`LabelError` subclass, or a :class:`~ss_stylegan.labelling.validation.FieldError` for a value
        of the wrong type or form, when the label is not acceptable."""
        identifier(image_id, "image")
        integer(slice_index, "slice", minimum=0)
        text(user, "user", MAX_USER_CHARS)
        if class_name is not None:
            text(class_name, "class", MAX_CLASS_CHARS)
        count = self.n_slices(image_id)
        if count is None:
            raise NotFoundError(f"image {image_id!r} is not in the datastore; list images with GET /datastore/?output=all")
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

        Raises:
            StorageFullError: the disk is full; nothing was stored (StorageError: another write failure).
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
        self._submit(_Change("set", image_id, int(slice_index), record))
        log.info("label %s[%d] = %s by %s", image_id, slice_index, class_name, user)
        return dict(record)

    def remove(self, image_id: str, slice_index: int) -> bool:
        """Remove the label of one slice; return whether there was one (durable when this returns)."""
        with self._lock:
            if int(slice_index) not in self._labels.get(image_id, {}):
                return False
        return self._submit(_Change("remove", image_id, int(slice_index))).existed

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
