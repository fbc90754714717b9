"""The one table from domain errors to HTTP status codes, and the scrubbing of server paths from answers.

The domain errors are the library's (:mod:`ss_stylegan.labelling.errors`, :mod:`ss_stylegan.labelling.label_store`, ...);
the two defined here belong to the HTTP surface over MONAI Label's inherited routes.

Every route of the app runs its work inside :func:`http_errors`: a library or service error becomes an
``HTTPException`` with the status of the first matching row of :data:`STATUS` and the error's message as
``detail``, with every server folder registered by :func:`hide_paths` (studies, workspace, temp, the app)
replaced by a relative name. An error type that is not in the table is a bug and stays a 500.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from ss_stylegan.config import ConfigError
from ss_stylegan.data.readers import StudyReadError
from ss_stylegan.data.uploads import UploadError, UploadTooLargeError
from ss_stylegan.labelling.errors import EmbeddingInProgressError, NotFoundError, NotReadyError  # noqa: F401
from ss_stylegan.labelling.label_values import (
    OrphanedLabelsError,
    SliceOutOfRangeError,
    UnknownClassError,
    UnreadableImageError,
)
from ss_stylegan.labelling.reservations import ReservationLimitError
from ss_stylegan.labelling.validation import FieldError
from ss_stylegan.maps.versions import WorkspaceError
from ss_stylegan.storage.faults import StorageError, StorageFullError, is_disk_full
from ss_stylegan.training.lock import TrainingBusyError


class ProtectedError(PermissionError):
    """A generic MONAI Label route was asked to change what only the app's own API may change (the slice
    label tag, the label counts it mirrors); HTTP 422 with the route to use instead."""


class NotUsedError(RuntimeError):
    """A MONAI Label feature this app does not offer (sessions); HTTP 406, as MONAI Label answers."""


STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (StorageFullError, 507),           # a full disk: nothing was stored
    (StorageError, 503),               # another failed write that matters: nothing was stored
    (UploadTooLargeError, 413),
    (UploadError, 422),
    (FieldError, 422),                 # includes PathEscapeError
    (ProtectedError, 422),
    (NotFoundError, 404),
    (UnknownClassError, 422),
    (SliceOutOfRangeError, 422),
    (UnreadableImageError, 422),
    (StudyReadError, 422),
    (OrphanedLabelsError, 409),
    (ConfigError, 422),                # a training request with a value out of range
    (ReservationLimitError, 429),
    (TrainingBusyError, 409),
    (EmbeddingInProgressError, 409),
    (NotReadyError, 409),
    (WorkspaceError, 409),
    (NotUsedError, 406),
)
"""``(error type, HTTP status)``; the first row whose type matches wins (subclasses before bases)."""

_hidden: list[tuple[str, str]] = []  # (folder, what it is called in answers), longest first


def hide_paths(**folders: str | Path | None) -> None:
    """Register server folders whose absolute paths must never appear in an answer.

    ``hide_paths(studies=..., workspace=...)``: a path inside a folder is shown relative to it; the folder
    itself is shown by its keyword (``<studies>``). The temp folder, the app and the Python prefix are
    always hidden.
    """
    found = {**{"temp": tempfile.gettempdir(), "server": str(Path(__file__).resolve().parent.parent),
                "python": sys.prefix}, **folders}
    pairs = {(os.path.realpath(str(p)), name) for name, p in found.items() if p}
    pairs |= {(os.path.abspath(str(p)), name) for name, p in found.items() if p}
    _hidden[:] = sorted(pairs, key=lambda pair: -len(pair[0]))


def redact(text: str) -> str:
    """``text`` with every registered server folder replaced (see :func:`hide_paths`)."""
    if not _hidden:
        hide_paths()
    for folder, name in _hidden:
        if folder in text:
            text = re.sub(re.escape(folder) + r"(?![^/\s'\",;:)\]])(?:/+([^\s'\",;)\]]*))?",
                          lambda m, n=name: _shown_path(m.group(1), n), text)
    return text


def _shown_path(rest: str | None, name: str) -> str:
    if not rest:
        return f"<{name}>"
    return rest.rstrip("/").rsplit("/", 1)[-1] if name == "temp" else rest  # a temp folder's name is noise


def redacted(value: Any) -> Any:
    """A JSON-like value with :func:`redact` applied to every string in it."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(v) for v in value]
    return value


def status_of(err: BaseException) -> int | None:
    """The HTTP status of a domain error (None for an error that is not in the table: a bug)."""
    for kind, status in STATUS:
        if isinstance(err, kind):
            return status
    return None


def storage_answer(err: OSError) -> tuple[int, str]:
    """``(status, message)`` for a file-system error no table row caught (e.g. on one of MONAI Label's own
    routes): 507 when the disk is full, else 503; the message says that the request was not completed."""
    if is_disk_full(err):
        return 507, redact(f"the server's disk is full ({err}); the request was not completed and nothing of it "
                           "was stored. Free some space and send it again")
    return 503, redact(f"the server could not read or write a file ({err}); the request was not completed. "
                       "Check the server's disks and send it again")


@contextmanager
def http_errors() -> Iterator[None]:
    """Turn domain errors raised in the block into HTTP answers (see :data:`STATUS`)."""
    try:
        yield
    except HTTPException as err:
        if isinstance(err.detail, str):
            err.detail = redact(err.detail)
        raise
    except Exception as err:
        status = status_of(err)
        if status is not None:
            raise HTTPException(status_code=status, detail=redact(str(err))) from err
        if isinstance(err, OSError):
            status, message = storage_answer(err)
            raise HTTPException(status_code=status, detail=message) from err
        raise


_PLACES = {"query": "query parameter", "path": "path parameter", "body": "field", "form": "form field",
           "header": "header", "cookie": "cookie"}


def validation_answer(errors: list[dict[str, Any]]) -> str:
    """FastAPI's list of request-validation errors as one sentence, like every other 422 of the app: what is
    missing or wrong, and where (``query parameter 'slice' is required``)."""
    parts = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ())]
        place = _PLACES.get(loc[0], "value") if loc else "value"
        name = ".".join(loc[1:]) or "the request body"
        if error.get("type") == "missing":
            parts.append(f"{place} {name!r} is required")
        else:
            parts.append(f"{place} {name!r}: {error.get('msg', 'is not valid')}")
    return "; ".join(parts) or "the request is not valid"
