"""Strict checks of values that come from a request: JSON without NaN, integers that are not booleans,
bounded strings without control characters, identifiers that cannot name a path, and paths that stay
inside a folder.

Also the one check of point arrays (:func:`finite_points`) that selection, classification and the server's
indexes share.

Every request check raises :class:`FieldError`, whose message names the field, says what was wrong and what is
accepted, so a server can answer 422 with it as it is. The checks never echo a long or binary value back
(the value is shortened and shown with ``repr``).
"""

from __future__ import annotations

import json
import math
import os
import re
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

MAX_ID_CHARS = 200
"""Longest image id or tag: a file name (255 bytes on most file systems) needs room for its suffix."""

_CONSTANTS = ("NaN", "Infinity", "-Infinity")


class FieldError(ValueError):
    """A request field has a value that is not accepted.

    Attributes:
        field: dotted name of the field (``"slice"``, ``"params.kimg"``, ``"body"``).
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}")


class PathEscapeError(FieldError):
    """A name would resolve to a file outside the folder it must stay in."""


def shown(value: Any, limit: int = 40) -> str:
    """``repr`` of a value, shortened, for an error message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# -- JSON -------------------------------------------------------------------------------------------
class _NonFinite:
    def __init__(self, text: str) -> None:
        self.text = text


def _find_non_finite(value: Any, path: str) -> tuple[str, str] | None:
    if isinstance(value, _NonFinite):
        return path, value.text
    if isinstance(value, float) and not math.isfinite(value):  # 1e999 parses as inf
        return path, repr(value)
    items: Iterable[tuple[str, Any]] = ()
    if isinstance(value, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    for sub_path, sub in items:
        found = _find_non_finite(sub, sub_path)
        if found:
            return found
    return None


def parse_json(raw: bytes | str, field: str = "body", empty: Any = None) -> Any:
    """Parse JSON text strictly: ``NaN``, ``Infinity`` and numbers too large for a float are refused.

    Args:
        raw: the JSON text (UTF-8 bytes or str).
        field: name used in errors for the document itself (its members are named ``field.key``).
        empty: value returned for an empty or blank text.

    Raises:
        FieldError: invalid JSON, or a non-finite number (the message names the member holding it).
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise FieldError(field, f"is not UTF-8 text ({err.reason} at byte {err.start})") from err
    if not raw.strip():
        return empty
    try:
        value = json.loads(raw, parse_constant=_NonFinite)
    except ValueError as err:
        raise FieldError(field, f"is not valid JSON ({err}); send a JSON object such as {{}}") from err
    found = _find_non_finite(value, "")
    if found:
        member = found[0]
        if field != "body" and member:
            member = f"{field}{'' if member.startswith('[') else '.'}{member}"
        raise FieldError(member or field, f"{found[1]} is not a number JSON allows; send a finite number")
    return value


def json_object(raw: bytes | str, field: str = "body") -> dict[str, Any]:
    """:func:`parse_json` for a document that must be an object; an empty text is ``{}``."""
    value = parse_json(raw, field, empty={})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FieldError(field, f"must be a JSON object ({{...}}), got {type(value).__name__}")
    return value


def only_keys(obj: dict[str, Any], allowed: Iterable[str], field: str = "body") -> None:
    """Refuse keys of ``obj`` outside ``allowed`` (a typo must not be silently ignored)."""
    allowed = tuple(allowed)
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise FieldError(f"{field}.{unknown[0]}" if field != "body" else unknown[0],
                         f"is not a known field; known fields are {list(allowed)}")


# -- scalars ----------------------------------------------------------------------------------------
def integer(value: Any, field: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (``true``/``false`` and ``3.0`` are refused), optionally within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(field, f"must be an integer, got {type(value).__name__} {shown(value)}")
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        low = "" if minimum is None else f" >= {minimum}"
        high = "" if maximum is None else f" <= {maximum}"
        raise FieldError(field, f"must be an integer{low}{' and' if low and high else ''}{high}, got {value}")
    return value


def integer_text(value: str, field: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer given as text (a query parameter): digits with an optional minus sign only."""
    text(value, field, max_chars=20)
    if not re.fullmatch(r"-?[0-9]+", value):
        raise FieldError(field, f"must be an integer, got {shown(value)}")
    return integer(int(value), field, minimum, maximum)


def boolean(value: Any, field: str) -> bool:
    """``true`` or ``false`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise FieldError(field, f"must be true or false, got {type(value).__name__} {shown(value)}")
    return value


def number(value: Any, field: str, minimum: float | None = None) -> float:
    """A finite number (not a boolean), optionally ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FieldError(field, f"must be a finite number, got {type(value).__name__} {shown(value)}")
    if minimum is not None and value < minimum:
        raise FieldError(field, f"must be >= {minimum}, got {value}")
    return float(value)


def text(value: Any, field: str, max_chars: int, allow_empty: bool = True) -> str:
    """A string of at most ``max_chars`` characters without control characters (tab, newline, NUL, ...)."""
    if not isinstance(value, str):
        raise FieldError(field, f"must be a string, got {type(value).__name__} {shown(value)}")
    if len(value) > max_chars:
        raise FieldError(field, f"is {len(value)} characters long; at most {max_chars} are accepted")
    if not value and not allow_empty:
        raise FieldError(field, "must not be empty")
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            raise FieldError(field, f"contains the control character U+{ord(ch):04X}; send printable text only")
    return value


def identifier(value: Any, field: str, max_chars: int = MAX_ID_CHARS) -> str:
    """An image id, label tag or similar name that becomes part of a file name.

    Refused: empty, longer than ``max_chars``, control characters, a path separator (``/``, ``\\``),
    ``.`` or ``..``, and a leading ``.`` (hidden files, such as the app's own state, are never ids).
    """
    value = text(value, field, max_chars, allow_empty=False)
    if "/" in value or "\\" in value or (os.altsep and os.altsep in value):
        raise FieldError(field, "contains a path separator ('/' or '\\'); give a datastore id (a file name "
                                "without folders, as listed by GET /datastore/)")
    if value.startswith("."):
        raise FieldError(field, f"{shown(value)} starts with '.'; ids never do (see GET /datastore/)")
    return value


def inside(root: str | Path, *names: str, field: str = "path") -> Path:
    """``root / names...`` after checking that it resolves inside ``root`` (symbolic links followed).

    Raises:
        PathEscapeError: the result would be outside ``root`` (``..``, an absolute name, a link out).
    """
    base = Path(root).resolve()
    for name in names:
        if not isinstance(name, str) or "\x00" in name or os.path.isabs(name):
            raise PathEscapeError(field, f"{shown(name)} is not a name inside the datastore")
    target = base.joinpath(*names).resolve()
    if target != base and base not in target.parents:
        raise PathEscapeError(field, f"{shown('/'.join(names))} would leave the datastore folder")
    return target


def finite_points(X: Any, name: str, error: Callable[[str], Exception]) -> np.ndarray:
    """``X`` as a 2-D array ``[N, D]`` of finite values (the map's points, or points to place or classify).

    Raises:
        ``error(message)``: not 2-D, or NaN / infinite values (the message names ``name``).
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise error(f"{name} must be a 2-D array [N, D], got shape {X.shape}")
    if X.size and not np.isfinite(X).all():
        raise error(f"{name} contains NaN or infinite values; refit the map")
    return X
