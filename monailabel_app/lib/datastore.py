"""MONAI Label's local datastore with crash-safe writes of ``datastore_v2.json``.

MONAI Label 0.8.5 rewrites ``datastore_v2.json`` in place (``open(path, "w")``), so a server killed during
a write leaves an empty or truncated file and the next start fails with a JSON error. Here the file is
written atomically (temp file + rename), and a file that is already unreadable is moved aside at start-up
(``datastore_v2.json.unreadable-<time>``) so MONAI Label rebuilds it from the files on disk. Slice labels
do not depend on it: they live in their own atomically written files under ``labels/slice_class/``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from monailabel.datastore.local import LocalDatastore

from ss_stylegan.atomic import atomic_write_text
from ss_stylegan.data.readers import VOLUME_SUFFIXES

log = logging.getLogger(__name__)

DATASTORE_FILE = "datastore_v2.json"


def set_aside_unreadable(studies: str | Path) -> Path | None:
    """Move an empty or invalid ``datastore_v2.json`` aside; return where it went (None when it was fine)."""
    path = Path(studies) / DATASTORE_FILE
    try:
        json.loads(path.read_text(encoding="utf-8"))
        return None
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        dest = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
        os.replace(path, dest)
        log.error("%s was unreadable (%s); moved it to %s and rebuilt the datastore from the files", path, err, dest)
        return dest


def datastore_extensions(defaults: list[str]) -> list[str]:
    """MONAI Label's file patterns plus every single-file study format the app reads (``*.mha``,
    ``*.mhd``, ``*.nhdr``, ``*.jpeg``, ...), so those studies get datastore ids like the others.

    DICOM series folders cannot be datastore entries (MONAI Label lists files); the app resolves
    them from its own study index (:meth:`lib.service.SliceLabelService.study`).
    """
    patterns = list(defaults)
    patterns += [f"*{suffix}" for suffix in VOLUME_SUFFIXES if f"*{suffix}" not in patterns]
    return patterns


class AtomicLocalDatastore(LocalDatastore):
    """:class:`LocalDatastore` whose state file is replaced atomically, never rewritten in place."""

    def _update_datastore_file(self, lock: bool = True) -> None:
        def write() -> None:
            self._ignore_event_config = True
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            atomic_write_text(self._datastore_config_path, text)
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            from filelock import FileLock

            with FileLock(self._lock_file):
                write()
        else:
            write()
