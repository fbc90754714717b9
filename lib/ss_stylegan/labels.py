"""Class labels of individual slices: validation, storage, listing and CSV export.

A label record is ``{"image", "slice", "class", "user", "timestamp"}``. Records of one image are kept in
one JSON file ``<folder>/<image_id>.json`` (a MONAI Label label folder such as
``<studies>/labels/slice_class/``), rewritten atomically under a lock at every change, so a crash never
leaves a truncated file and two clients labelling at once both keep their labels.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ss_stylegan.atomic import atomic_write_text

log = logging.getLogger(__name__)

CSV_FIELDS = ("image", "slice", "class", "user", "timestamp")
_SAFE_ID = re.compile(r"^[^/\\\x00]+$")


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


class SliceLabelStore:
    """Thread-safe store of slice class labels backed by one JSON file per image.

    Args:
        folder: directory holding ``<image_id>.json`` files (created when missing).
        classes: valid class names.
        n_slices: callable giving the number of slices of an image id, or None for an unknown image;
            it may raise :class:`UnreadableImageError`. Used to refuse unknown images and slice indices
            out of range.
    """

    def __init__(self, folder: str | Path, classes: list[str], n_slices: Callable[[str], int | None]) -> None:
        self.folder = Path(folder)
        self.classes = list(classes)
        self.n_slices = n_slices
        self._lock = threading.RLock()
        self._labels: dict[str, dict[int, dict[str, Any]]] = {}
        self.folder.mkdir(parents=True, exist_ok=True)
        self._load()

    # -- persistence ------------------------------------------------------------------------------
    def _path(self, image_id: str) -> Path:
        return self.folder / f"{image_id}.json"

    def _load(self) -> None:
        for path in sorted(self.folder.glob("*.json")):
            try:
                records = json.loads(path.read_text(encoding="utf-8"))
                image_id = path.name[: -len(".json")]
                self._labels[image_id] = {int(r["slice"]): dict(r) for r in records}
            except (ValueError, KeyError, TypeError) as err:
                log.error("ignoring unreadable label file %s: %s", path, err)

    def _save(self, image_id: str) -> None:
        records = sorted(self._labels.get(image_id, {}).values(), key=lambda r: r["slice"])
        path = self._path(image_id)
        if records:
            atomic_write_text(path, json.dumps(records, indent=1))
        elif path.exists():
            path.unlink()

    # -- validation -------------------------------------------------------------------------------
    def validate(self, image_id: str, slice_index: int, class_name: str | None = None) -> None:
        """Raise a :class:`LabelError` subclass when the (image, slice, class) triple is not acceptable."""
        if not isinstance(image_id, str) or not _SAFE_ID.match(image_id):
            raise UnknownImageError(f"invalid image id {image_id!r}")
        count = self.n_slices(image_id)
        if count is None:
            raise UnknownImageError(f"image {image_id!r} is not in the datastore; list images with GET /datastore/")
        if isinstance(slice_index, bool) or not isinstance(slice_index, int):
            raise SliceOutOfRangeError(f"slice must be an integer, got {slice_index!r}")
        if not 0 <= slice_index < count:
            raise SliceOutOfRangeError(
                f"slice {slice_index} is out of range for image {image_id!r}: it has {count} slice(s), "
                f"valid indices are 0..{count - 1}"
            )
        if class_name is not None and class_name not in self.classes:
            raise UnknownClassError(f"unknown class {class_name!r}; valid classes are {self.classes}")

    # -- public API -------------------------------------------------------------------------------
    def set(self, image_id: str, slice_index: int, class_name: str, user: str = "") -> dict[str, Any]:
        """Store (or replace) the label of one slice and return the stored record."""
        self.validate(image_id, slice_index, class_name)
        record = {
            "image": image_id,
            "slice": int(slice_index),
            "class": class_name,
            "user": str(user or ""),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        with self._lock:
            self._labels.setdefault(image_id, {})[int(slice_index)] = record
            self._save(image_id)
        log.info("label %s[%d] = %s by %s", image_id, slice_index, class_name, user)
        return dict(record)

    def remove(self, image_id: str, slice_index: int) -> bool:
        """Remove the label of one slice; return whether there was one."""
        with self._lock:
            removed = self._labels.get(image_id, {}).pop(int(slice_index), None)
            if removed is not None:
                if not self._labels[image_id]:
                    del self._labels[image_id]
                self._save(image_id)
        return removed is not None

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

    def to_csv(self) -> str:
        """CSV text with header ``image,slice,class,user,timestamp``."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for rec in self.records():
            writer.writerow({k: rec.get(k, "") for k in CSV_FIELDS})
        return buf.getvalue()
