"""What a slice label may hold: its errors, the class list, and CSV cells that a spreadsheet cannot run."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

CSV_FIELDS = ("image", "slice", "class", "user", "timestamp")
MAX_USER_CHARS = 128
MAX_CLASS_CHARS = 64
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class LabelError(ValueError):
    """A label request is invalid; the message says what was wrong and what is accepted."""


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
