"""The studies in a folder: the one source of truth for which image ids exist.

:class:`StudyIndex` lists the studies of the datastore folder (single files and DICOM series folders, as
:func:`~ss_stylegan.data.cache.find_studies` finds them for training) and keeps that list until the folder
changes. The live map, the label flags, the label store's slice counts and the app's mirror into MONAI
Label's datastore all ask this one index; MONAI Label's own datastore listing (files only) is refreshed by the
app when the index knows an id the datastore does not.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import NamedTuple

from ss_stylegan.config import ConfigError
from ss_stylegan.data.cache import IGNORED_NAMES, Study, find_studies
from ss_stylegan.data.readers import is_volume_file

# when the folder's stamp moved but the names of its entries that can be studies did not (MONAI Label rewrote
# datastore_v2.json after label writes, through a hidden temp file and lock file), the studies are listed again
# (every entry examined: a DICOM folder may have been filled since) at most this often
RESCAN_S = 10.0


class _Listing(NamedTuple):
    stamp: int | None              # the folder's mtime when it was listed
    studies: list[Study]
    ignored: list[str]             # files that are not studies
    by_id: dict[str, Study]


class StudyIndex:
    """The studies of ``folder``, listed again only when the folder changes.

    When entries are added, removed or renamed the folder is listed again at once; when only its stamp moved
    (its own files rewritten), in a background thread at most every ``RESCAN_S`` seconds: examining thousands
    of entries on a request thread would stall requests. The listing objects stay the same while the studies
    do, so callers may key caches on them.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._cache = _Listing(None, [], [], {})
        self._names: frozenset[str] | None = None  # entry names at the last full listing
        self._listed_at = 0.0
        self._relisting = False

    def _scan(self) -> _Listing:
        stamp = self.folder.stat().st_mtime_ns
        cached = self._cache
        if cached.stamp == stamp:
            return cached
        with self._lock:
            cached = self._cache
            if cached.stamp == stamp:
                return cached
            names = frozenset(n for n in os.listdir(self.folder) if not n.startswith(".") and n not in IGNORED_NAMES)
            if names == self._names:
                # the same entries: only the folder's own files were rewritten. Keep the listing; list again in
                # the background at most every RESCAN_S (a DICOM folder may have been filled since), so a
                # request never pays for examining thousands of entries
                self._cache = cached._replace(stamp=stamp)
                if time.monotonic() - self._listed_at >= RESCAN_S and not self._relisting:
                    self._relisting = True
                    threading.Thread(target=self._relist, name="ss_stylegan-studies", daemon=True).start()
                return self._cache
            return self._list(stamp, names)

    def _list(self, stamp: int, names: frozenset[str]) -> _Listing:
        """List the folder now. Caller holds ``_lock``."""
        listed_at = time.monotonic()
        return self._install(stamp, names, listed_at, *self._read())

    def _read(self) -> tuple[list[Study], list[str]]:
        """The folder's studies and the files that are not studies (examines every entry: no lock needed)."""
        ignored = [
            e.name for e in sorted(self.folder.iterdir(), key=lambda p: p.name)
            if not (e.name.startswith(".") or e.name in IGNORED_NAMES or e.is_dir() or is_volume_file(e))
        ]
        return find_studies(self.folder), ignored

    def _install(self, stamp: int, names: frozenset[str], listed_at: float, studies: list[Study],
                 ignored: list[str]) -> _Listing:
        """Make a listing the current one. Caller holds ``_lock``."""
        self._names, self._listed_at = names, listed_at
        previous = self._cache
        if previous.studies == studies and previous.ignored == ignored:  # unchanged: keep the objects (keyed on)
            self._cache = previous._replace(stamp=stamp)
        else:
            self._cache = _Listing(stamp, studies, ignored, {s.image_id: s for s in studies})
        return self._cache

    def _relist(self) -> None:
        """The background listing: the folder is examined without the lock (thousands of entries take tens of
        milliseconds, and every request's :meth:`_scan` takes the lock when the folder's stamp moves, as it does at
        every label while MONAI Label rewrites its state file there); the result is put in under the lock unless a
        request listed the folder since this one began."""
        try:
            started = time.monotonic()
            stamp = self.folder.stat().st_mtime_ns
            names = frozenset(n for n in os.listdir(self.folder) if not n.startswith(".") and n not in IGNORED_NAMES)
            studies, ignored = self._read()
            with self._lock:
                if self._listed_at <= started:
                    self._install(stamp, names, started, studies, ignored)
        except OSError:
            pass  # the folder is unreadable now; the next request reports it
        finally:
            self._relisting = False

    def studies(self) -> list[Study]:
        """Every study, in image-id order."""
        return list(self._scan().studies)

    def by_id(self) -> dict[str, Study]:
        """``{image id: study}`` (do not modify)."""
        return self._scan().by_id

    def study(self, image_id: str) -> Study | None:
        """The study (file or DICOM series folder) of an image id, or None when the folder has none."""
        return self._scan().by_id.get(image_id)

    def ignored_files(self) -> list[str]:
        """Files in the folder that are not studies (not images), so a user sees why they are unused."""
        return list(self._scan().ignored)


def process_start_time() -> float | None:
    """When this process started (seconds since the epoch), from ``/proc``; None where there is no ``/proc``."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            ticks = int(fh.read().rsplit(") ", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def check_studies_folder(folder: str | Path, create: bool = False) -> None:
    """Refuse a studies folder that does not exist, so a typo in ``--studies`` is not served as an empty datastore.

    MONAI Label's command line creates a missing folder before the app starts, so a folder that is empty and was
    made after this process started is taken as missing (and removed again). With ``create`` it is kept (and
    made when missing).

    Raises:
        ConfigError: the folder does not exist (or was just made for this server), or is not a folder.
    """
    folder = Path(folder)
    if create:
        folder.mkdir(parents=True, exist_ok=True)
        return
    hint = "check the path, or add --conf create_studies true to start on a new empty folder"
    if not folder.exists():
        raise ConfigError(f"the studies folder {folder} does not exist: {hint}")
    if not folder.is_dir():
        raise ConfigError(f"the studies path {folder} is not a folder: give the folder that holds the studies")
    started = process_start_time()
    try:
        empty = not any(folder.iterdir())
        made = folder.stat().st_ctime
    except OSError as err:
        raise ConfigError(f"the studies folder {folder} cannot be read ({err.strerror})") from None
    if empty and started is not None and made >= started - 1.0:
        try:
            folder.rmdir()      # MONAI Label made it a moment ago for this server; leave no trace of the typo
        except OSError:
            pass
        raise ConfigError(f"the studies folder {folder} does not exist (it was created empty just now by "
                          f"monailabel start_server): {hint}")
