"""Which stored labels no longer fit their study, judged against the studies folder and the live map.

A label is *flagged* (:func:`ss_stylegan.labelling.flags.flag_of`) when its study was deleted, cannot be read, has
fewer slices now, or its file changed since the label was made. Flagged labels are listed with the reason
and left out of suggestions and classification, never moved or dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

from ss_stylegan.data.fingerprint import Fingerprint, FingerprintCache, Stamp
from ss_stylegan.data.fingerprint import stamp as study_stamp
from ss_stylegan.data.readers import StudyReadError, read_volume
from ss_stylegan.labelling.label_store import SliceLabelStore
from ss_stylegan.labelling.label_values import UnreadableImageError
from ss_stylegan.labelling.live_map import LiveSliceMap
from ss_stylegan.labelling.studies import StudyIndex
from ss_stylegan.maps.slice_map import SliceMap

log = logging.getLogger(__name__)

FLAGS_TTL_S = 1.0  # flags are recomputed when labels or the map change; studies swept at most this often


class _Depth(NamedTuple):
    stamp: Stamp
    n_slices: int | str            # the study's slice count, or why it cannot be read


class _AllFlags(NamedTuple):
    key: Any                       # (label store version, map, studies being re-read, folder listing)
    swept_at: float                # monotonic time of the last full sweep
    flags: dict[tuple[str, int], str]


class _ImageFlags(NamedTuple):
    signature: tuple[Any, ...]     # what the image's flags depend on (see LabelFlags._signature)
    flags: dict[tuple[str, int], str]


class LabelFlags:
    """The flags of a label store's labels, kept between calls and judged again only where something changed.

    Args:
        studies: the studies of the folder.
        maps: the live slice map (a study's slice count is the map's while its file is the embedded one).
        fingerprints: content hashes of study files (shared with the live map).
    """

    def __init__(self, studies: StudyIndex, maps: LiveSliceMap, fingerprints: FingerprintCache) -> None:
        self.studies = studies
        self.maps = maps
        self.fingerprints = fingerprints
        self.labels: SliceLabelStore | None = None  # set by the owner once the store exists (it asks depth_of)
        self._depths: dict[str, _Depth] = {}  # study path -> its slice count (or why unreadable) at a stamp
        self._flags = _AllFlags(None, 0.0, {})
        self._image_flags: dict[str, _ImageFlags] = {}  # per image: its flags and what they depend on
        self._relabelled: set[str] = set()  # images whose labels changed since flags() last looked
        self._relabelled_lock = threading.Lock()
        self._state_lock = threading.RLock()  # the flags and per-image judgements; not held while files are swept
        self._sweeping = False
        self._usable: tuple[int, dict[tuple[str, int], str], dict[tuple[str, int], str]] | None = None

    def depth_of(self, image_id: str, slice_map: SliceMap | None = None) -> int | None:
        """Number of slices of a study now (None when the folder has no such study).

        The map's count is used while the study's file is the one that was embedded; otherwise the file
        is read (once per stamp). ``slice_map``: the current map when the caller already has it.

        Raises:
            UnreadableImageError: the study is in the folder but cannot be read.
        """
        study = self.studies.study(image_id)
        if study is None:
            return None
        slice_map = slice_map if slice_map is not None else self.maps.current()
        if slice_map is not None and (image_id in slice_map.depths or image_id in slice_map.errors) \
                and not self.maps.is_stale(image_id, slice_map):
            if image_id in slice_map.depths:
                return slice_map.depths[image_id]
            raise UnreadableImageError(slice_map.errors[image_id])
        now = study_stamp(study.path)
        if now is None:
            return None
        key = str(study.path)
        cached = self._depths.get(key)
        if cached is None or cached.stamp != now:
            try:
                cached = _Depth(now, read_volume(study.path).n_slices)
            except StudyReadError as err:
                cached = _Depth(now, str(err))
            self._depths[key] = cached
        if isinstance(cached.n_slices, str):
            raise UnreadableImageError(cached.n_slices)
        return cached.n_slices

    def study_state(self, image_id: str, records: list[dict[str, Any]], slice_map: SliceMap | None = None
                    ) -> StudyState:
        """What the folder holds for ``image_id`` now, to judge its ``records`` by (hashes the file only
        when a record's stamp differs from the file's)."""
        study = self.studies.study(image_id)
        if study is None:
            return StudyState(exists=False)
        try:
            n_slices = self.depth_of(image_id, slice_map)
        except UnreadableImageError as err:
            return StudyState(exists=True, error=str(err))
        now = study_stamp(study.path)
        state = StudyState(exists=True, n_slices=n_slices, fingerprint=Fingerprint(now) if now else None)
        if state.needs_hash(records):
            state = StudyState(exists=True, n_slices=n_slices, fingerprint=self.fingerprints.fingerprint(study.path))
        return state

    def relabelling(self, image_id: str) -> None:
        """Called before a label of ``image_id`` is written, so a flags computation that sees the store's new
        version always judges the image again."""
        with self._relabelled_lock:
            self._relabelled.add(image_id)

    def flags(self) -> dict[tuple[str, int], str]:
        """``{(image, slice): why the label no longer fits}`` for every flagged label (do not modify).

        Every study with labels is judged again at once when the map or the folder's studies change. A label
        change judges again only the studies whose labels changed, so it costs no more with thousands of labelled
        studies. A study file changed in place (same name, same folder listing) is found by a sweep that looks
        at every labelled study's stamp (and reads or hashes the ones that changed): it runs in a background
        thread at most every ``FLAGS_TTL_S``, never on the request that finds it due, since at a few thousand
        labelled studies it takes tens of milliseconds and the request would make every annotator behind it wait.
        """
        assert self.labels is not None, "LabelFlags.labels is set by the labelling service"
        slice_map = self.maps.current()
        # the listing object changes only when the studies do (not when MONAI Label rewrites its state file)
        scene = (id(slice_map), self.maps.changed, self.studies.by_id())
        key = (self.labels.version, *scene)
        with self._state_lock:
            cached_key, at, flags = self._flags
            if cached_key is None or cached_key[1:] != scene:
                return self._sweep(slice_map, scene, key)
            if time.monotonic() - at >= FLAGS_TTL_S:
                self._sweep_in_background()
            if cached_key == key:
                return flags
            relabelled = self._take_relabelled()
            flags = {k: v for k, v in flags.items() if k[0] not in relabelled}
            for image_id in relabelled:
                records = self.labels.records(image_id)
                flags.update(self._judge(image_id, records, slice_map, scene).flags)
            self._flags = _AllFlags(key, at, flags)  # the time of the last sweep: the next one is still due at `at + TTL`
            return flags

    def sweep(self) -> dict[tuple[str, int], str]:
        """Look at every labelled study now (what the background sweep does), and return the flags."""
        self._sweep_files()
        return self.flags()

    def usable(self) -> dict[tuple[str, int], str]:
        """``{(image, slice): class}`` of every label that is not flagged (kept per label state and flags: do not
        modify)."""
        assert self.labels is not None
        flags = self.flags()
        version = self.labels.version   # read before the labels: a cached answer is never older than its key
        cached = self._usable
        if cached is not None and cached[0] == version and cached[1] is flags:
            return cached[2]
        usable = {k: c for k, c in self.labels.labelled_keys().items() if k not in flags}
        self._usable = (version, flags, usable)
        return usable

    def _sweep(self, slice_map: SliceMap | None, scene: tuple[Any, ...], key: tuple[Any, ...]
               ) -> dict[tuple[str, int], str]:
        """Judge every labelled study (those whose signature is unchanged keep their flags). Caller holds
        ``_state_lock``."""
        self._take_relabelled()
        flags = {}
        kept, judged = self._image_flags, {}
        for image_id in self.labels.images():
            records = self.labels.records(image_id)
            previous = kept.get(image_id)
            signature = self._signature(image_id, records, scene)
            judged[image_id] = previous if previous is not None and previous.signature == signature \
                else self._judged(image_id, records, slice_map, signature)
            flags.update(judged[image_id].flags)
        self._image_flags = judged
        self._flags = _AllFlags(key, time.monotonic(), flags)
        return flags

    def _sweep_in_background(self) -> None:
        """Start :meth:`_sweep_files` in a thread unless one runs. Caller holds ``_state_lock``."""
        if self._sweeping:
            return
        self._sweeping = True
        threading.Thread(target=self._background_sweep, name="ss_stylegan-flags", daemon=True).start()

    def _background_sweep(self) -> None:
        try:
            self._sweep_files()
        except Exception:  # noqa: BLE001  (a sweep must not end the server; the next one tries after FLAGS_TTL_S)
            log.exception("looking at the labelled studies failed; their flags are kept as they were")
            with self._state_lock:   # not a new thread per request while it keeps failing
                self._flags = self._flags._replace(swept_at=time.monotonic())
        finally:
            self._sweeping = False

    def _sweep_files(self) -> None:
        """Judge again every labelled study whose file stamp (or anything else its flags depend on) changed, outside
        the state lock, then put in the new judgements of studies whose labels did not change meanwhile (a label
        change is judged by the request that sees it)."""
        slice_map = self.maps.current()
        scene = (id(slice_map), self.maps.changed, self.studies.by_id())
        changed = {}
        for image_id in self.labels.images():
            records = self.labels.records(image_id)
            previous = self._image_flags.get(image_id)
            signature = self._signature(image_id, records, scene)
            if previous is None or previous.signature != signature:
                changed[image_id] = self._judged(image_id, records, slice_map, signature)
        with self._state_lock:
            cached_key, _, flags = self._flags
            if cached_key is None or cached_key[1:] != scene:
                return   # the map or the studies changed meanwhile: the next call judges every study again
            for image_id, judged in changed.items():
                if _labels_part(self.labels.records(image_id)) != judged.signature[2]:
                    continue   # relabelled meanwhile: judged (or about to be) by the request that sees it
                flags = {k: v for k, v in flags.items() if k[0] != image_id}
                flags.update(judged.flags)
                self._image_flags[image_id] = judged
            self._flags = _AllFlags(cached_key, time.monotonic(), flags)

    def _signature(self, image_id: str, records: list[dict[str, Any]], scene: tuple[Any, ...]) -> tuple[Any, ...]:
        """What an image's flags depend on: the map and the studies being re-read (``scene`` without the
        folder's listing), the study's file and its stamp (None when the study is gone), and its labels."""
        study = self.studies.study(image_id)
        return (scene[:2], None if study is None else (study.path, study_stamp(study.path)), _labels_part(records))

    def _judge(self, image_id: str, records: list[dict[str, Any]], slice_map: SliceMap | None,
               scene: tuple[Any, ...]) -> _ImageFlags:
        """One image's labels judged against its study now (kept for the next sweep). Caller holds
        ``_state_lock``."""
        judged = self._judged(image_id, records, slice_map, self._signature(image_id, records, scene))
        self._image_flags[image_id] = judged
        return judged

    def _judged(self, image_id: str, records: list[dict[str, Any]], slice_map: SliceMap | None,
                signature: tuple[Any, ...]) -> _ImageFlags:
        state = self.study_state(image_id, records, slice_map)
        return _ImageFlags(signature, {(image_id, r["slice"]): why for r in records if (why := flag_of(r, state))})

    def _take_relabelled(self) -> set[str]:
        with self._relabelled_lock:
            taken, self._relabelled = self._relabelled, set()
        return taken


def _labels_part(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What of an image's label records its flags depend on."""
    return [(r["slice"], r["class"], r["timestamp"], r.get("study")) for r in records]


@dataclasses.dataclass(frozen=True)
class StudyState:
    """What the datastore holds for an image id now, to judge its labels by.

    Attributes:
        exists: the study is in the studies folder.
        error: why it cannot be read (None when it can).
        n_slices: its number of slices (None when unknown).
        fingerprint: its file's fingerprint now; ``sha256`` may be None when no label needed a hash (every
            label's recorded stamp matches the current one).
    """

    exists: bool
    error: str | None = None
    n_slices: int | None = None
    fingerprint: Fingerprint | None = None

    def needs_hash(self, records: Iterable[dict[str, Any]]) -> bool:
        """Whether judging ``records`` needs the study's content hash (some recorded stamp differs)."""
        return self.fingerprint is not None and any(
            r.get("study") and Fingerprint.from_dict(r["study"]).stamp != self.fingerprint.stamp for r in records)


def flag_of(record: dict[str, Any], state: StudyState) -> str | None:
    """Why a stored label no longer fits its study (None when it does). Labels are never moved or
    dropped because of a flag; a flagged label is left out of suggestions and classification until it
    is stored again (confirmed) or removed."""
    if not state.exists:
        return "the study is no longer in the studies folder"
    if state.error:
        return f"the study cannot be read now: {state.error}"
    if state.n_slices is not None and record["slice"] >= state.n_slices:
        return f"the study now has {state.n_slices} slice(s); slice {record['slice']} no longer exists"
    if record.get("study") and state.fingerprint is not None:
        then, now = Fingerprint.from_dict(record["study"]), state.fingerprint
        if _header_only(then, now):
            return None  # stamped before a detached header's data file counted (judged by range alone)
        if then.stamp != now.stamp and then.sha256 and now.sha256 and then.sha256 != now.sha256:
            return ("the study file changed since this slice was labelled; check the slice and store its "
                    "label again (PUT /slicelabels/) or remove it")
    return None


def _header_only(then: Fingerprint, now: Fingerprint) -> bool:
    """Whether ``then`` is the older record of a detached header (``.nhdr``, ``.mhd``) that stamped and hashed the
    header alone: the same header file (inode), one file then and its data files now. (A one-file DICOM series
    that later gains files, same folder inode, is judged the same way: by range alone.)"""
    return then.stamp.n_files == 1 and now.stamp.n_files > 1 and then.stamp.inode == now.stamp.inode
