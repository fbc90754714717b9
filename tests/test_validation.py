"""Strict request values (``ss_stylegan.labelling.validation``): every refusal names the field and never echoes a long value."""

from __future__ import annotations

from pathlib import Path

import pytest

from ss_stylegan.labelling.validation import (
    FieldError,
    PathEscapeError,
    identifier,
    inside,
    integer,
    integer_text,
    json_object,
    number,
    only_keys,
    parse_json,
    text,
)


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        ('{"slice": NaN}', "slice", "NaN is not a number JSON allows"),
        ('{"a": {"b": [1, Infinity]}}', "a.b[1]", "Infinity"),
        ('{"user": -Infinity}', "user", "-Infinity"),
        ('{"kimg": 1e999}', "kimg", "inf"),
        ('{"slice": 3', "body", "is not valid JSON"),
        (b'{"user": "\xff"}', "body", "is not UTF-8"),
    ],
)
def test_json_refuses_non_finite_numbers_naming_the_member(raw: str | bytes, field: str, message: str) -> None:
    with pytest.raises(FieldError, match=message) as err:
        parse_json(raw)
    assert err.value.field == field


def test_json_object_members_are_named_under_the_document() -> None:
    with pytest.raises(FieldError) as err:
        json_object('{"kimg": NaN}', "params")
    assert err.value.field == "params.kimg"
    assert json_object("", "params") == {} and json_object("null") == {}
    with pytest.raises(FieldError, match="must be a JSON object"):
        json_object("[1, 2]")
    with pytest.raises(FieldError, match="known fields are"):
        only_keys({"image": 1, "colour": 2}, ("image",))


def test_numbers_are_not_booleans() -> None:
    assert integer(3, "slice", minimum=0) == 3
    for bad in (True, False, 3.0, "3", None):
        with pytest.raises(FieldError, match="slice: must be an integer"):
            integer(bad, "slice")
    with pytest.raises(FieldError, match=">= 1 and <= 32, got 33"):
        integer(33, "count", minimum=1, maximum=32)
    assert integer_text("12", "slice") == 12
    with pytest.raises(FieldError, match="must be an integer"):
        integer_text("1e3", "slice")
    assert number(2, "kimg") == 2.0
    with pytest.raises(FieldError, match="finite number"):
        number(True, "kimg")


def test_strings_are_bounded_and_printable() -> None:
    assert text("alice", "user", 10) == "alice"
    with pytest.raises(FieldError, match="user: is 1048576 characters long; at most 128"):
        text("u" * (1 << 20), "user", 128)
    for control in ("a\x00b", "line\nbreak", "tab\there", "bidi\u202eoverride"):
        with pytest.raises(FieldError, match="control character"):
            text(control, "user", 128)
    with pytest.raises(FieldError, match="must be a string, got int"):
        text(5, "user", 128)


@pytest.mark.parametrize("bad", ["", "../x", "/etc/passwd", "a/b", "a\\b", ".hidden", "..", "x\x00", "a" * 201])
def test_identifiers_cannot_name_a_path(bad: str) -> None:
    with pytest.raises(FieldError) as err:
        identifier(bad, "image")
    assert err.value.field == "image" and len(str(err.value)) < 300


def test_inside_keeps_paths_in_their_folder(tmp_path: Path) -> None:
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "link").symlink_to(tmp_path)
    assert inside(tmp_path / "studies", "a.nii.gz") == (tmp_path / "studies" / "a.nii.gz").resolve()
    for name in ("../a", "/etc/passwd", "link/secret", "a\x00b"):
        with pytest.raises(PathEscapeError):
            inside(tmp_path / "studies", name)
