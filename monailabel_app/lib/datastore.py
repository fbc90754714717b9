"""MONAI Label's local datastore, guarded: crash-safe state file, ids and tags that cannot leave the studies
folder, the app's label tag kept out of the generic label API, and label counts mirrored in batches.

- MONAI Label 0.8.5 rewrites ``datastore_v2.json`` in place (``open(path, "w")``), so a server killed
  during a write leaves an empty or truncated file and the next start fails with a JSON error. Here the
  file is written atomically (temp file + rename), and a file that is already unreadable is moved aside at
  start-up (``datastore_v2.json.unreadable-<time>``) so MONAI Label rebuilds it from the files on disk.
- Every method that turns an image id or a label tag into a file name checks it first
  (:func:`ss_stylegan.labelling.validation.identifier`, :func:`~ss_stylegan.labelling.validation.inside`): no ``..``, no
  absolute path, no separator, no NUL. The HTTP routes check the same before they get here
  (:mod:`lib.guards`); this is the second line.
- The app's slice labels (tag ``slice_class``) live in their own store (:mod:`ss_stylegan.labelling.label_store`); the
  generic label methods refuse that tag (:class:`~lib.errors.ProtectedError`), so ``PUT`` or ``DELETE
  /datastore/label?tag=slice_class`` cannot overwrite or delete them.
- Uploaded images are copied in atomically (a hidden temp file renamed into place), so the map never
  reads half a study.
- MONAI Label's auto-reload watches the whole studies tree recursively, so every append to the slice
  label journal and every file a training writes into the workspace woke its watcher (this alone halved
  label write throughput). Here the watcher covers what MONAI Label reloads from: the studies folder
  itself (image files, ``datastore_v2.json``) and the generic label folders, not the app's own state.

Slice label counts are mirrored into each image's info (``GET /datastore/``) by
:class:`lib.label_counts.LabelCountMirror`.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from ss_stylegan.data.readers import VOLUME_SUFFIXES
from ss_stylegan.labelling.validation import FieldError, identifier, inside
from ss_stylegan.storage.atomic import atomic_write_text

from lib.errors import ProtectedError

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
    them from its own study index (:class:`ss_stylegan.labelling.studies.StudyIndex`).
    """
    patterns = list(defaults)
    patterns += [f"*{suffix}" for suffix in VOLUME_SUFFIXES if f"*{suffix}" not in patterns]
    return patterns


class AtomicLocalDatastore(LocalDatastore):
    """:class:`LocalDatastore` with the guards described in the module docstring.

    Args:
        protected_tag: the label tag only the app's own label API may write (``slice_class``).
        protected_info: the image-info key the app mirrors its label counts into.
    """

    def __init__(self, datastore_path: str, *, protected_tag: str, protected_info: str, auto_reload: bool = False,
                 **kwargs: Any) -> None:
        self.protected_tag = protected_tag
        self.protected_info = protected_info
        super().__init__(datastore_path, auto_reload=False, **kwargs)
        self._auto_reload = auto_reload
        if auto_reload:
            self._watch()

    def _watch(self) -> None:
        """Reload on changes of images, generic labels and the state file, watching no folder recursively."""
        image_dir = self._datastore.image_path()
        folders = [image_dir] + [str(p) for p in Path(self._datastore.label_path(None)).iterdir()
                                 if p.is_dir() and p.name != self.protected_tag]
        handler = _ReloadHandler(self, re.compile("|".join(fnmatch.translate(e) for e in self._extensions)))
        self._observer = PollingObserver() if self._is_on_mount(image_dir) else Observer()
        for folder in folders:
            self._observer.schedule(handler, path=folder, recursive=False)
        try:
            self._observer.start()
        except OSError as err:
            log.error("cannot watch %s for changes (%s): studies copied in are seen at the next refresh",
                      image_dir, err)

    # -- checks -----------------------------------------------------------------------------------------
    def check_tag(self, tag: Any, writing: bool) -> str:
        identifier(tag, "tag")
        if writing and tag == self.protected_tag:
            raise ProtectedError(
                f"tag: the label tag {tag!r} holds the app's slice labels and is changed only through "
                "PUT / DELETE /slicelabels/ (which validate every label and keep it durable)")
        return tag

    def _image_file(self, image_id: str, ext: str) -> Path:
        return inside(self._datastore.image_path(), self._filename(identifier(image_id, "image"), ext), field="image")

    # -- images -----------------------------------------------------------------------------------------
    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        name_id, ext = self._to_id(os.path.basename(image_filename))
        image_id = image_id or name_id
        dest = self._image_file(image_id, ext)
        with FileLock(self._lock_file):
            existing = self._datastore.objects.get(image_id)
            if existing is not None and existing.image.ext != ext:
                raise FieldError("image", f"image {image_id!r} already exists as {image_id}{existing.image.ext}; "
                                          "upload it in that format, or delete it first (DELETE /datastore/image)")
            tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
            try:
                shutil.copyfile(image_filename, tmp)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
            info = dict(image_info or {})
            info.update({"ts": int(time.time()), "name": dest.name})
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext))
            self._update_datastore_file(lock=False)
        log.info("added image %s (%s)", image_id, dest.name)
        return image_id

    def remove_image(self, image_id: str) -> None:
        identifier(image_id, "image")
        super().remove_image(image_id)

    def get_image_uri(self, image_id: str) -> str:
        identifier(image_id, "image")
        return super().get_image_uri(image_id)

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        identifier(image_id, "image")
        return super().get_image_info(image_id)

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        identifier(image_id, "image")
        if self.protected_info in info:
            raise ProtectedError(f"info: {self.protected_info!r} is the app's count of slice labels; it follows "
                                 "the labels (PUT /slicelabels/) and cannot be set by hand")
        super().update_image_info(image_id, info)

    # -- generic labels -----------------------------------------------------------------------------------
    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        identifier(image_id, "image")
        self.check_tag(label_tag, writing=True)
        inside(self._datastore.label_path(label_tag), field="tag")
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        identifier(label_id, "id")
        self.check_tag(label_tag, writing=True)
        super().remove_label(label_id, label_tag)
        if self._auto_reload:  # a tag folder made after start-up is not watched
            self.refresh()

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        identifier(label_id, "label")
        self.check_tag(label_tag, writing=False)
        return super().get_label_uri(label_id, label_tag)

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        identifier(label_id, "label")
        self.check_tag(label_tag, writing=False)
        return super().get_label_info(label_id, label_tag)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        identifier(label_id, "label")
        self.check_tag(label_tag, writing=True)
        super().update_label_info(label_id, label_tag, info)

    # -- the app's own writes ---------------------------------------------------------------------------------
    def set_images_info(self, infos: dict[str, dict[str, Any]]) -> list[str]:
        """Merge ``{image id: info}`` into many images at once (one rewrite of the state file); return the
        ids the datastore does not list (left unchanged)."""
        missing = []
        with FileLock(self._lock_file):
            for image_id, info in infos.items():
                obj = self._datastore.objects.get(image_id)
                if obj is None:
                    missing.append(image_id)
                else:
                    obj.image.info.update(info)
            if len(missing) < len(infos):
                self._update_datastore_file(lock=False)
        return missing

    def _update_datastore_file(self, lock: bool = True) -> None:
        def write() -> None:
            self._ignore_event_config = True
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), default=str)  # no indent: the C encoder
            atomic_write_text(self._datastore_config_path, text)
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()


class _ReloadHandler(FileSystemEventHandler):
    """MONAI Label's reload rules for a file event, with the file names matched by one compiled pattern
    (watchdog's pattern handler re-translates every pattern for every event: most of the cost of a busy
    folder). Only creations, deletions and moves of image/label files and changes of the state file count;
    opened/closed events and hidden files (temp files, locks) never do."""

    def __init__(self, store: AtomicLocalDatastore, names: re.Pattern[str]) -> None:
        self.store = store
        self.names = names

    def dispatch(self, event: FileSystemEvent) -> None:
        paths = [os.fsdecode(event.src_path)] + ([os.fsdecode(event.dest_path)] if event.dest_path else [])
        if event.event_type == "modified":
            if self.store._datastore_config_path in paths:
                self.store._on_modify_event(event)
        elif event.event_type in ("created", "deleted", "moved") and not event.is_directory:
            names = [os.path.basename(p) for p in paths]
            if any(self.names.match(n) and not n.startswith(".") for n in names):
                self.store._on_any_event(event)
