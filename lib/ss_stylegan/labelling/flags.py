"""Which stored labels no longer fit their study, judged against the studies folder and the live map.

A label is *flagged* (:func:`ss_stylegan.labelling.flags.flag_of`) when its study was deleted, cannot be read, has
fewer slices now, or its file changed since the label was made. Flagged labels are listed with the reason
and left out of suggestions and classification, never moved or dropped.
"""

from __future__ import annotations

import dataclasses
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

FLAGS_TTL_S = 1.0  # flags are recomputed when labels or the map change, else at most this often


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
        """``{(image, slice): why the label no longer fits}`` for every flagged label.

        Every study with labels is judged again when the map or the folder's studies change, and at most every
        ``FLAGS_TTL_S`` otherwise (a study file changed in place); a study whose labels, file stamp, map and
        folder are unchanged since it was last judged keeps its flags, at the cost of one ``stat``. Between
        those sweeps, a label change judges again only the studies whose labels changed, so it costs no more
        with thousands of labelled studies.
        """
        assert self.labels is not None, "LabelFlags.labels is set by the labelling service"
        slice_map = self.maps.current()
        # the listing object changes only when the studies do (not when MONAI Label rewrites its state file)
        scene = (id(slice_map), self.maps.changed, self.studies.by_id())
        key = (self.labels.version, *scene)
        cached_key, at, flags = self._flags
        now = time.monotonic()
        if cached_key is not None and cached_key[1:] == scene and now - at < FLAGS_TTL_S:  # (store version, *scene)
            if cached_key == key:
                return flags
            relabelled = self._take_relabelled()
            flags = {k: v for k, v in flags.items() if k[0] not in relabelled}
            for image_id in relabelled:
                records = self.labels.records(image_id)
                flags.update(self._judge(image_id, records, slice_map, scene).flags)
            self._flags = _AllFlags(key, at, flags)  # the time of the last sweep: the next one is still due at `at + TTL`
            return flags
        self._take_relabelled()
        flags = {}
        kept, judged = self._image_flags, {}
        for image_id in self.labels.images():
            records = self.labels.records(image_id)
            previous = kept.get(image_id)
            if previous is not None and previous.signature == self._signature(image_id, records, scene):
                judged[image_id] = previous
            else:
                judged[image_id] = self._judge(image_id, records, slice_map, scene)
            flags.update(judged[image_id].flags)
        self._image_flags = judged
        self._flags = _AllFlags(key, now, flags)
        return flags

    def usable(self) -> dict[tuple[str, int], str]:
        """``{(image, slice): class}`` of every label that is not flagged."""
        assert self.labels is not None
        flags = self.flags()
        return {k: c for k, c in self.labels.labelled_keys().items() if k not in flags}

    def _signature(self, image_id: str, records: list[dict[str, Any]], scene: tuple[Any, ...]) -> tuple[Any, ...]:
        """What an image's flags depend on: the map and the studies being re-read (``scene`` without the
        folder's listing), the study's file and its stamp (None when the study is gone), and its labels."""
        study = self.studies.study(image_id)
        return (scene[:2], None if study is None else (study.path, study_stamp(study.path)),
                [(r["slice"], r["class"], r["timestamp"], r.get("study")) for r in records])

    def _judge(self, image_id: str, records: list[dict[str, Any]], slice_map: SliceMap | None,
               scene: tuple[Any, ...]) -> _ImageFlags:
        """One image's labels judged against its study now (kept for the next sweep)."""
        signature = self._signature(image_id, records, scene)
        state = self.study_state(image_id, records, slice_map)
        judged = _ImageFlags(signature, {(image_id, r["slice"]): why for r in records if (why := flag_of(r, state))})
        self._image_flags[image_id] = judged
        return judged

    def _take_relabelled(self) -> set[str]:
        with self._relabelled_lock:
            taken, self._relabelled = self._relabelled, set()
        return taken


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
