"""Fingerprints of studies on disk: a cheap stamp (size, times, inode) and a content hash.

A study that is rewritten, truncated or replaced by another of the same name must not keep the slices,
map points and labels of its old content. Comparing stamps costs one ``stat`` per file; the SHA-256 of the
content is computed only when a stamp changed (a ``touch`` or a copy back of the same bytes then keeps
everything), and is cached per stamp by :class:`FingerprintCache`.

A study's files (:func:`study_files`): a DICOM series folder's files directly inside it (sorted by name), a
detached header (``.nhdr``, ``.mhd``) with its data files (siblings with the same stem, such as ``.raw``),
or the one file. Stamps and hashes cover all of them, so a rewritten data file is seen like a rewritten header.

Names: a *stamp* is what ``stat`` says, a *fingerprint* a stamp with the content's hash (this module); the
slice cache keys its entries on the files' sizes and times (:mod:`ss_stylegan.data.cache`) and training
checks weights across ranks with a *checksum* (:mod:`ss_stylegan.training.distributed`).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import threading
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Stamp:
    """What ``stat`` says about a study: any change of content changes at least one field.

    ``ctime_ns`` cannot be set by a user program, so a rewrite that restores size and mtime still shows.
    """

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    n_files: int = 1


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """A stamp plus the SHA-256 of the content it was taken with (None when not hashed yet)."""

    stamp: Stamp
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.stamp), "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        fields = {f.name for f in dataclasses.fields(Stamp)}
        return cls(Stamp(**{k: int(v) for k, v in data.items() if k in fields}), data.get("sha256"))


DETACHED_HEADER_SUFFIXES = (".nhdr", ".mhd")
"""Header formats whose voxels live in a separate file next to them."""


def _files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def study_files(path: str | Path) -> list[Path]:
    """Every file a study is read from: a folder's files, a detached header then its data files, or the file.

    Raises:
        OSError: a folder that cannot be listed.
    """
    path = Path(path)
    if path.is_dir():
        return _files(path)
    if path.suffix.lower() in DETACHED_HEADER_SUFFIXES:
        data = sorted(p for p in path.parent.glob(f"{glob.escape(path.stem)}.*") if p != path and p.is_file())
        return [path, *data]
    return [path]


def stamp(path: str | Path) -> Stamp | None:
    """The stamp of a study (all of its files); None when it does not exist (or cannot be listed)."""
    path = Path(path)
    try:
        st = path.stat()
        files = study_files(path)
        if len(files) == 1 and files[0] == path:
            return Stamp(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        stats = [p.stat() for p in files if p != path]
        if not path.is_dir():
            stats.append(st)
    except OSError:
        return None
    return Stamp(
        size=sum(s.st_size for s in stats),
        mtime_ns=max([st.st_mtime_ns, *(s.st_mtime_ns for s in stats)]),
        ctime_ns=max([st.st_ctime_ns, *(s.st_ctime_ns for s in stats)]),
        inode=st.st_ino,
        n_files=len(stats),
    )


def content_hash(path: str | Path) -> str:
    """SHA-256 (hex) of a study: of its file, or of the names and contents of its files.

    Raises:
        OSError: the study cannot be read.
    """
    path = Path(path)
    digest = hashlib.sha256()
    files = study_files(path)
    for file in files:
        if len(files) > 1 or path.is_dir():
            digest.update(file.name.encode("utf-8", "surrogateescape") + b"\0")
        with open(file, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


class FingerprintCache:
    """Fingerprints of studies, re-hashed only when their stamp changes. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[str, Fingerprint] = {}

    def fingerprint(self, path: str | Path) -> Fingerprint | None:
        """The current fingerprint of ``path`` (None when it is gone or unreadable)."""
        key = os.fspath(path)
        now = stamp(path)
        if now is None:
            return None
        with self._lock:
            known = self._known.get(key)
        if known is not None and known.stamp == now:
            return known
        try:
            sha = content_hash(path)
        except OSError:
            return None
        if stamp(path) != now:  # changed while hashing: the hash may mix old and new bytes
            return Fingerprint(now, None)
        found = Fingerprint(now, sha)
        with self._lock:
            self._known[key] = found
        return found

    def remember(self, path: str | Path, fingerprint: Fingerprint) -> None:
        """Seed the cache with a fingerprint taken elsewhere (e.g. recorded in a slice map)."""
        if fingerprint.sha256 is not None:
            with self._lock:
                self._known.setdefault(os.fspath(path), fingerprint)
