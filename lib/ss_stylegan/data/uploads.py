"""Bounded uploads of study files: size caps, single-file formats only, header checks before any read.

An uploaded study is checked in three steps, each with its own limit (:class:`UploadLimits`):

1. **bytes** received (:func:`receive`): the copy stops as soon as the cap is passed;
2. **declared voxels**: the image header (NIfTI-1/2, NRRD, MetaImage, PNG, JPEG) is parsed on its own,
   so a header claiming 512 x 512 x 4000 voxels is refused before an array is allocated;
3. **decompressed bytes**: compressed data (gzip NIfTI, gzip/bzip2 NRRD, zlib MetaImage) is streamed
   through a decompressor that only counts, so a small file that unpacks to gigabytes is refused
   before a reader unpacks it into memory.

Formats whose voxels live in another file (``.nhdr``, ``.mhd``, ANALYZE ``.hdr``/``.img``, a NIfTI pair),
and attached-header files that still name a data file (NRRD ``data file:``, MetaImage
``ElementDataFile`` other than ``LOCAL``) are refused: an upload must never make the server read a file
that the upload names. Errors are :class:`UploadError` (HTTP 422) or :class:`UploadTooLargeError`
(HTTP 413); messages name the limit and the setting that raises it, never a server path.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import re
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO

CHUNK = 1 << 20
UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".png", ".jpg", ".jpeg")
"""Single-file formats accepted as uploads (lower case; ``.nii.gz`` before ``.nii``)."""
DETACHED_SUFFIXES = (".nhdr", ".mhd", ".hdr", ".img", ".raw")
"""Formats whose header and voxels are separate files: refused as uploads."""
_MAX_TEXT_HEADER = 1 << 16
_MB = 1 << 20


class UploadError(ValueError):
    """An upload that is refused (HTTP 422); the message says why and what is accepted."""


class UploadTooLargeError(UploadError):
    """An upload over one of the size limits (HTTP 413); the message names the limit and its setting."""


@dataclasses.dataclass(frozen=True)
class UploadLimits:
    """Caps on one uploaded file.

    Attributes:
        max_bytes: bytes received (setting ``max_upload_mb``).
        max_unpacked_bytes: bytes after decompression (setting ``max_upload_unpacked_mb``).
        max_voxels: voxels declared in the image header (setting ``max_upload_voxels``).
    """

    max_bytes: int = 1024 * _MB
    max_unpacked_bytes: int = 2048 * _MB
    max_voxels: int = 512 * 512 * 1024

    def check_voxels(self, voxels: int, shape: tuple[int, ...]) -> None:
        if voxels > self.max_voxels:
            raise UploadTooLargeError(
                f"the image header declares {' x '.join(map(str, shape))} = {voxels} voxels; this server accepts "
                f"at most {self.max_voxels} per upload (setting max_upload_voxels)")

    def check_unpacked(self, n_bytes: int) -> None:
        if n_bytes > self.max_unpacked_bytes:
            raise UploadTooLargeError(
                f"the upload unpacks to more than {self.max_unpacked_bytes / _MB:.0f} MB, the most this server "
                "accepts (setting max_upload_unpacked_mb)")


@dataclasses.dataclass(frozen=True)
class UploadInfo:
    """What the header of an accepted upload declares."""

    suffix: str
    shape: tuple[int, ...]
    voxels: int


def upload_suffix(filename: str | None, default: str = ".nii.gz") -> str:
    """The accepted format suffix of an uploaded file's name (``default`` when the client sent no name).

    Raises:
        UploadError: a detached-header format or a type that is not accepted.
    """
    name = Path((filename or "").replace("\\", "/")).name.lower()
    if not name:
        return default
    for suffix in UPLOAD_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    for suffix in DETACHED_SUFFIXES:
        if name.endswith(suffix):
            raise UploadError(
                f"'{suffix}' files keep their voxels in a separate file, which an upload cannot bring along "
                "(and must not name); upload the study as one file: .nii.gz, .nii, .nrrd or .mha")
    raise UploadError(f"unsupported upload type {Path(name).suffix or name!r}; upload one of "
                      f"{', '.join(UPLOAD_SUFFIXES)}")


def receive(source: BinaryIO, dest: IO[bytes], limits: UploadLimits) -> int:
    """Copy an upload stream into ``dest`` in chunks; return the number of bytes.

    Raises:
        UploadTooLargeError: more than ``limits.max_bytes`` arrived (the copy stops there).
    """
    total = 0
    while True:
        chunk = source.read(CHUNK)
        if not chunk:
            return total
        total += len(chunk)
        if total > limits.max_bytes:
            raise UploadTooLargeError(
                f"the upload is larger than {limits.max_bytes / _MB:.0f} MB, the most this server accepts "
                "(setting max_upload_mb)")
        dest.write(chunk)


def upload_name(filename: str | None, suffix: str) -> str:
    """A safe file name for an upload: the client's name without folders or odd characters, with the
    accepted suffix (``scan 1.nii.gz`` -> ``scan_1.nii.gz``; no name -> ``upload.nii.gz``)."""
    name = Path((filename or "").replace("\\", "/")).name
    stem = name[: -len(suffix)] if name.lower().endswith(suffix) else ""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip(".")[:100]
    return f"{stem or 'upload'}{suffix}"


@contextmanager
def received_upload(source: BinaryIO, filename: str | None, limits: UploadLimits,
                    folder: str | Path | None = None) -> Iterator[tuple[Path, UploadInfo]]:
    """Receive, check and hold an uploaded study in a private temporary folder for the block.

    Yields ``(path, info)``: the file (named by :func:`upload_name`) and what its header declares. The
    folder and everything in it are removed when the block ends, whether it ends normally or not.

    Raises:
        UploadError, UploadTooLargeError: see :func:`upload_suffix`, :func:`receive`, :func:`inspect_upload`.
    """
    suffix = upload_suffix(filename)
    with tempfile.TemporaryDirectory(prefix="ss_stylegan-upload-", dir=folder) as tmp:
        path = Path(tmp) / upload_name(filename, suffix)
        with open(path, "wb") as fh:
            receive(source, fh, limits)
        info = inspect_upload(path, suffix, limits)
        yield path, info


def inspect_upload(path: str | Path, suffix: str, limits: UploadLimits) -> UploadInfo:
    """Check an uploaded file's header and unpacked size before any image reader touches it.

    Args:
        path: the received file.
        suffix: its format, from :func:`upload_suffix`.
        limits: the caps to apply.

    Raises:
        UploadError: the header is not a valid single-file header of that format, or names a data file.
        UploadTooLargeError: too many declared voxels, or too many bytes once decompressed.
    """
    inspect = _INSPECTORS.get(suffix)
    if inspect is None:
        raise UploadError(f"unsupported upload type {suffix!r}; upload one of {', '.join(UPLOAD_SUFFIXES)}")
    with open(path, "rb") as fh:
        shape = inspect(fh, limits)
    voxels = 1
    for n in shape:
        voxels *= n
    return UploadInfo(suffix=suffix, shape=shape, voxels=voxels)


# -- decompression without keeping the output ---------------------------------------------------------
def _count_unpacked(fh: BinaryIO, make: Callable[[], Any], limits: UploadLimits, what: str) -> int:
    """Stream the rest of ``fh`` through decompressors (one per concatenated member), counting output
    bytes against the limit without keeping them."""
    decompressor = make()
    total = 0
    pending = b""
    try:
        while True:
            data_in = pending or fh.read(CHUNK)
            pending = b""
            if not data_in:
                return total
            if decompressor.eof:  # the member before ended exactly where this data starts
                decompressor = make()
            while data_in and not decompressor.eof:  # at the end of a member the rest is in unused_data
                total += len(decompressor.decompress(data_in, CHUNK))
                limits.check_unpacked(total)
                data_in = getattr(decompressor, "unconsumed_tail", b"")
            while not getattr(decompressor, "needs_input", True) and not decompressor.eof:  # bz2 keeps output
                total += len(decompressor.decompress(b"", CHUNK))
                limits.check_unpacked(total)
            if decompressor.eof and decompressor.unused_data:  # another gzip / bzip2 member follows
                pending = decompressor.unused_data
                decompressor = make()
    except (OSError, EOFError, zlib.error) as err:
        raise UploadError(f"the {what} data is not valid compressed data ({err})") from err


def _gzip() -> Any:
    return zlib.decompressobj(wbits=47)  # gzip or zlib header, detected


def _zlib() -> Any:
    return zlib.decompressobj()


def _bzip2() -> Any:
    return bz2.BZ2Decompressor()


# -- NIfTI ----------------------------------------------------------------------------------------------
def _nifti(fh: BinaryIO, limits: UploadLimits, gzipped: bool) -> tuple[int, ...]:
    head = fh.read(540)
    if gzipped:
        fh.seek(0)
        try:
            with gzip.GzipFile(fileobj=fh) as gz:
                head = gz.read(540)
        except (OSError, EOFError, zlib.error) as err:
            raise UploadError(f"the .nii.gz upload is not valid gzip data ({err})") from err
    shape = _nifti_shape(head)
    limits.check_voxels(_product(shape), shape)
    if gzipped:
        fh.seek(0)
        _count_unpacked(fh, _gzip, limits, "gzip")
    return shape


def _nifti_shape(head: bytes) -> tuple[int, ...]:
    if len(head) < 348:
        raise UploadError("the upload is too short to hold a NIfTI header (348 bytes)")
    for endian in ("<", ">"):
        size = struct.unpack(f"{endian}i", head[:4])[0]
        if size == 348:
            magic = head[344:348]
            dims = struct.unpack(f"{endian}8h", head[40:56])
            break
        if size == 540 and len(head) >= 540:
            magic = head[4:8]
            dims = struct.unpack(f"{endian}8q", head[16:80])
            break
    else:
        raise UploadError("the upload has no NIfTI header (sizeof_hdr is neither 348 nor 540); "
                          "upload a NIfTI-1 or NIfTI-2 file")
    if magic[:3] in (b"ni1", b"ni2"):
        raise UploadError("the NIfTI header says its voxels are in a separate .img file; upload a single-file "
                          "NIfTI (.nii or .nii.gz)")
    if magic[:3] not in (b"n+1", b"n+2"):
        raise UploadError("the upload's NIfTI magic is missing; upload a single-file NIfTI (.nii or .nii.gz)")
    n_dims = dims[0]
    if not 1 <= n_dims <= 7 or any(d < 1 for d in dims[1:n_dims + 1]):
        raise UploadError(f"the NIfTI header declares an invalid shape (dim = {list(dims)})")
    return tuple(int(d) for d in dims[1:n_dims + 1])


# -- NRRD and MetaImage (text headers) --------------------------------------------------------------------
def _header_lines(fh: BinaryIO, what: str, stop: Callable[[str], bool]) -> list[str]:
    """Text header lines up to (and including) the line for which ``stop`` is true; ``fh`` is left at the
    first byte after that line."""
    lines: list[str] = []
    size = 0
    while True:
        raw = fh.readline(_MAX_TEXT_HEADER)
        size += len(raw)
        if not raw or size > _MAX_TEXT_HEADER:
            raise UploadError(f"the {what} header does not end within {_MAX_TEXT_HEADER // 1024} KB; "
                              f"upload a {what} file with its data attached")
        line = raw.decode("latin-1").rstrip("\r\n")
        lines.append(line)
        if stop(line):
            return lines


def _shape(fields: dict[str, str], key: str, what: str) -> tuple[int, ...]:
    """The image size a text header declares in ``fields[key]`` (whitespace-separated positive integers)."""
    try:
        shape = tuple(int(v) for v in fields[key].split())
    except (KeyError, ValueError) as err:
        raise UploadError(f"the {what} header has no valid {key!r} field") from err
    if not shape or any(n < 1 for n in shape):
        raise UploadError(f"the {what} header declares an invalid shape ({key} = {fields[key]})")
    return shape


def _nrrd(fh: BinaryIO, limits: UploadLimits) -> tuple[int, ...]:
    if not fh.read(4) == b"NRRD":
        raise UploadError("the upload does not start with an NRRD header ('NRRD000x')")
    fh.seek(0)
    lines = _header_lines(fh, "NRRD", lambda line: line == "")
    fields: dict[str, str] = {}
    for line in lines[1:-1]:
        key, sep, value = line.partition(": ")
        if line.startswith("#") or not sep or ":=" in key:  # a comment or a key:=value pair
            continue
        fields[key.strip().lower()] = value.strip()
    if "data file" in fields or "datafile" in fields:
        raise UploadError("the NRRD header names a separate data file ('data file:'); an upload must carry "
                          "its voxels itself: save the image as a single .nrrd with attached data")
    shape = _shape(fields, "sizes", "NRRD")
    limits.check_voxels(_product(shape), shape)
    encoding = fields.get("encoding", "raw").lower()
    if encoding in ("gzip", "gz"):
        _count_unpacked(fh, _gzip, limits, "NRRD gzip")
    elif encoding in ("bzip2", "bz2"):
        _count_unpacked(fh, _bzip2, limits, "NRRD bzip2")
    elif encoding not in ("raw", "ascii", "text", "txt", "hex"):
        raise UploadError(f"NRRD encoding {encoding!r} is not accepted; use raw, gzip or bzip2")
    return shape


def _metaimage(fh: BinaryIO, limits: UploadLimits) -> tuple[int, ...]:
    lines = _header_lines(fh, "MetaImage", lambda line: line.split("=", 1)[0].strip() == "ElementDataFile")
    fields = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    if "NDims" not in fields and "ObjectType" not in fields:
        raise UploadError("the upload is not a MetaImage (.mha) file: no NDims / ObjectType field")
    if fields.get("ElementDataFile", "").upper() != "LOCAL":
        raise UploadError("the MetaImage header names a separate data file (ElementDataFile = "
                          f"{fields.get('ElementDataFile', '')[:40]!r}); an upload must carry its voxels itself: "
                          "save the image as a single .mha (ElementDataFile = LOCAL)")
    shape = _shape(fields, "DimSize", "MetaImage")
    channels = fields.get("ElementNumberOfChannels", "1")
    full = shape + ((int(channels),) if channels.isdigit() and int(channels) > 1 else ())
    limits.check_voxels(_product(full), full)
    if fields.get("CompressedData", "False").lower() == "true":
        _count_unpacked(fh, _zlib, limits, "MetaImage zlib")
    return shape


# -- pictures ---------------------------------------------------------------------------------------------
def _png(fh: BinaryIO, limits: UploadLimits) -> tuple[int, ...]:
    head = fh.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise UploadError("the upload is not a PNG file (no PNG signature and IHDR chunk)")
    width, height = struct.unpack(">II", head[16:24])
    return _picture_shape(height, width, "PNG", limits)


def _picture_shape(height: int, width: int, what: str, limits: UploadLimits) -> tuple[int, ...]:
    shape = (int(height), int(width))
    if not all(shape):
        raise UploadError(f"the {what} header declares an empty image")
    limits.check_voxels(_product(shape), shape)
    return shape


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(fh: BinaryIO, limits: UploadLimits) -> tuple[int, ...]:
    if fh.read(2) != b"\xff\xd8":
        raise UploadError("the upload is not a JPEG file (no start-of-image marker)")
    while True:
        marker = fh.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            raise UploadError("the JPEG file has no frame header (SOF) before its data")
        if marker[1] in (0xD8, 0x01) or 0xD0 <= marker[1] <= 0xD7:
            continue
        length_bytes = fh.read(2)
        if len(length_bytes) < 2:
            raise UploadError("the JPEG file is cut short")
        length = struct.unpack(">H", length_bytes)[0]
        segment = fh.read(length - 2)
        if marker[1] in _SOF:
            if len(segment) < 5:
                raise UploadError("the JPEG frame header is cut short")
            height, width = struct.unpack(">HH", segment[1:5])
            return _picture_shape(height, width, "JPEG", limits)


def _product(shape: tuple[int, ...]) -> int:
    total = 1
    for n in shape:
        total *= int(n)
    return total


_INSPECTORS: dict[str, Callable[[BinaryIO, UploadLimits], tuple[int, ...]]] = {
    ".nii.gz": lambda fh, limits: _nifti(fh, limits, gzipped=True),
    ".nii": lambda fh, limits: _nifti(fh, limits, gzipped=False),
    ".nrrd": _nrrd,
    ".mha": _metaimage,
    ".png": _png,
    ".jpg": _jpeg,
    ".jpeg": _jpeg,
}

__all__ = [
    "DETACHED_SUFFIXES", "UPLOAD_SUFFIXES", "UploadError", "UploadInfo", "UploadLimits", "UploadTooLargeError",
    "inspect_upload", "receive", "received_upload", "upload_name", "upload_suffix",
]
