"""The label store's plain files: per-image JSON exports for MONAI Label, and the journal of the old store.

The store of record is an SQLite database (:class:`~ss_stylegan.labelling.label_store.SliceLabelStore`). Next to it, in
MONAI Label's label-tag folder, every labelled image has ``<image_id>.json`` (its records, sorted by slice),
so MONAI Label and anyone browsing the folder see the labels as files. Those files are *exports*: written
from the database by a background thread (:class:`LabelExports`) shortly after each change, never read
back except to rebuild a damaged database.

Folders written before the database existed hold those same per-image files as *snapshots* plus
``.journal.jsonl`` / ``.journal-<n>.jsonl``, JSON lines of the changes since. :func:`read_label_files` reads
both kinds of folder, as the migration into the database and a read-only process need it. It never stops on
damage: an unreadable snapshot, a line that is not UTF-8 or not JSON, a torn entry with another appended
onto it (a failed append on a full disk) are each skipped and reported, and every complete entry is kept.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ss_stylegan.labelling.batches import BatchWriter
from ss_stylegan.labelling.validation import inside
from ss_stylegan.storage.atomic import atomic_write_text
from ss_stylegan.storage.faults import FaultEpisodes

log = logging.getLogger(__name__)

LEGACY_JOURNAL = ".journal.jsonl"
LEGACY_ROTATED = ".journal-*.jsonl"
EXPORT_DELAY_S = 0.5   # changes gather this long before their images' files are written
EXPORT_RETRY_S = 5.0   # after a failed export (a full disk), the next try

Labels = dict[str, dict[int, dict[str, Any]]]
"""``{image_id: {slice: record}}``."""


def legacy_journals(folder: Path) -> list[Path]:
    """The old store's journals in the order they were written: rotated ones, then the current one."""
    rotated = sorted(folder.glob(LEGACY_ROTATED))
    current = folder / LEGACY_JOURNAL
    return rotated + ([current] if current.exists() else [])


def read_label_files(folder: Path, set_aside: bool = False) -> tuple[Labels, list[str]]:
    """Every label the per-image files and the old journals of ``folder`` hold: ``(labels, skipped)``.

    Args:
        folder: a label-tag folder.
        set_aside: move an unreadable per-image file to ``<name>.unreadable-<time>`` (so that an export
            written later does not replace the evidence); else it is only reported.

    Returns:
        The labels, and one line for each thing skipped (a file, or a journal line, and why).
    """
    labels: Labels = {}
    skipped: list[str] = []
    for path in sorted(folder.glob("*.json")):
        image_id = path.name[: -len(".json")]
        try:
            records = json.loads(path.read_bytes().decode("utf-8"))
            labels[image_id] = {int(r["slice"]): dict(r) for r in records}
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            where = path.name
            if set_aside:
                aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
                os.replace(path, aside)
                where = f"{path.name} (moved to {aside.name})"
            skipped.append(f"{where}: unreadable ({err})")
    for journal in legacy_journals(folder):
        skipped += _replay(journal, labels)
    return labels, skipped


def _replay(journal: Path, labels: Labels) -> list[str]:
    """Apply every complete entry of ``journal`` to ``labels``; return what was skipped."""
    skipped = []
    data = journal.read_bytes()
    lines = data.split(b"\n")
    for line_no, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        last = line_no == len(lines)  # no newline after it: a write cut off by a crash, never acknowledged
        try:
            _apply(json.loads(raw.decode("utf-8")), labels)
            continue
        except UnicodeDecodeError:
            reason = "not UTF-8"
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            reason = f"incomplete ({err})"
        salvaged = _salvage(raw, labels)
        what = f"{journal.name} line {line_no}: {reason}"
        if salvaged:
            what += f"; kept the {salvaged} complete entr{'y' if salvaged == 1 else 'ies'} appended after a torn one"
        elif last:
            what += ", cut off by a crash before it was acknowledged"
        skipped.append(what)
    return skipped


def _salvage(raw: bytes, labels: Labels) -> int:
    """Entries appended straight onto a torn fragment (``{"op":"set","record":{"im{"op":"set",...}``): apply
    the complete entry after the last fragment; return how many were applied."""
    start = raw.rfind(b'{"op":')
    if start <= 0:
        return 0
    try:
        _apply(json.loads(raw[start:].decode("utf-8")), labels)
    except (ValueError, KeyError, TypeError, AttributeError):
        return 0
    return 1


def _apply(entry: dict[str, Any], labels: Labels) -> None:
    if entry["op"] == "set":
        record = dict(entry["record"])
        labels.setdefault(str(record["image"]), {})[int(record["slice"])] = record
    elif entry["op"] == "remove":
        image = str(entry["image"])
        labels.get(image, {}).pop(int(entry["slice"]), None)
        if not labels.get(image, True):
            del labels[image]
    else:
        raise ValueError(f"unknown journal operation {entry['op']!r}")


class LabelExports(BatchWriter):
    """Writes ``<image_id>.json`` of every changed image in a background thread, shortly after the change.

    A failed write (a full disk) is retried every ``EXPORT_RETRY_S``; the database stays the record.

    Args:
        folder: the label-tag folder.
        records_of: callable giving the current records of an image id (empty when it has none).
        faults: where failures are reported, once per episode.
    """

    def __init__(self, folder: Path, records_of: Callable[[str], list[dict[str, Any]]],
                 faults: FaultEpisodes) -> None:
        super().__init__("slice-label-exports", EXPORT_DELAY_S, EXPORT_RETRY_S)
        self.folder = folder
        self.records_of = records_of
        self.faults = faults

    def remove_stale(self, labelled: set[str]) -> None:
        """Delete the export of every image that has no label now (e.g. removed while the server was down)."""
        self.changed(*({p.name[: -len(".json")] for p in self.folder.glob("*.json")} - labelled))

    def _write(self, batch: set[str]) -> set[str]:
        """Write the files of ``batch``; return the image ids whose file could not be written."""
        failed = set()
        for image_id in sorted(batch):
            try:
                path = inside(self.folder, f"{image_id}.json", field="image")
                records = self.records_of(image_id)
                if records:
                    atomic_write_text(path, json.dumps(records, indent=1))
                else:
                    path.unlink(missing_ok=True)
            except OSError as err:
                self.faults.failed(f"writing the label export files in {self.folder}", err)
                failed.add(image_id)
        if not failed and batch:
            self.faults.recovered(f"writing the label export files in {self.folder}")
        return failed
