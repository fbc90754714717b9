"""Which labels no longer fit their study (``labelling/flags.py``), without a server: a trained datastore copy, a
real label store, and studies deleted, shortened, rewritten, touched or made unreadable on disk."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ss_stylegan.config import SliceConfig
from ss_stylegan.data.fingerprint import Fingerprint, FingerprintCache, Stamp
from ss_stylegan.data.synthetic import make_synthetic_study
from ss_stylegan.labelling.flags import LabelFlags, StudyState, flag_of
from ss_stylegan.labelling.label_store import SliceLabelStore
from ss_stylegan.labelling.live_map import LiveSliceMap
from ss_stylegan.labelling.studies import StudyIndex
from ss_stylegan.workspace import Workspace


class Labelled:
    """The service's stack of the label flags: studies, live map, fingerprints and a writable label store."""

    def __init__(self, studies: Path) -> None:
        self.folder = studies
        self.studies = StudyIndex(studies)
        fingerprints = FingerprintCache()
        self.maps = LiveSliceMap(self.studies, Workspace(studies / ".ss_stylegan"), SliceConfig(resolution=32), "cpu",
                                 lambda: False, fingerprints)
        self.flags = LabelFlags(self.studies, self.maps, fingerprints)
        self.store = SliceLabelStore(studies / "labels" / "slice_class", ["normal", "lesion"], self.flags.depth_of)
        self.flags.labels = self.store
        self.fingerprints = fingerprints

    def label(self, image: str, slice_index: int, class_name: str = "lesion") -> None:
        study = self.studies.study(image)
        self.flags.relabelling(image)
        self.store.set(image, slice_index, class_name, "tester", study=self.fingerprints.fingerprint(study.path))

    def flags_now(self) -> dict[tuple[str, int], str]:
        return self.flags.sweep()   # every labelled study looked at now (not in the background after FLAGS_TTL_S)


def test_labels_of_unchanged_studies_are_not_flagged(trained_studies: Callable[..., Path]) -> None:
    stack = Labelled(trained_studies())
    stack.label("study_00", 3)
    stack.label("study_01", 11, "normal")
    assert stack.flags_now() == {}
    assert stack.flags.usable() == {("study_00", 3): "lesion", ("study_01", 11): "normal"}


def test_a_deleted_study_flags_its_labels_and_only_them(trained_studies: Callable[..., Path]) -> None:
    studies = trained_studies()
    stack = Labelled(studies)
    stack.label("study_00", 3)
    stack.label("study_01", 4)
    (studies / "study_01.nii.gz").unlink()
    flags = stack.flags_now()
    assert set(flags) == {("study_01", 4)} and "no longer in the studies folder" in flags[("study_01", 4)]
    assert stack.flags.usable() == {("study_00", 3): "lesion"}


def test_a_shorter_study_flags_the_slices_it_lost(trained_studies: Callable[..., Path]) -> None:
    studies = trained_studies()
    stack = Labelled(studies)
    stack.label("study_02", 2)
    stack.label("study_02", 10)
    make_synthetic_study(studies / "study_02.nii.gz", n_slices=6, size=32, random_state=5)   # 12 -> 6 slices
    flags = stack.flags_now()
    assert ("study_02", 10) in flags and "now has 6 slice(s)" in flags[("study_02", 10)]
    assert "changed since this slice was labelled" in flags[("study_02", 2)]


def test_a_rewritten_study_flags_its_labels_and_a_touch_does_not(trained_studies: Callable[..., Path]) -> None:
    studies = trained_studies()
    stack = Labelled(studies)
    stack.label("study_00", 5)
    stack.label("study_01", 5)
    os.utime(studies / "study_00.nii.gz")                                  # same bytes, new times
    shutil.copy(studies / "study_02.nii.gz", studies / "study_01.nii.gz")  # same name, another scan
    flags = stack.flags_now()
    assert set(flags) == {("study_01", 5)}
    stack.label("study_01", 5)                                             # confirmed on the new file
    assert stack.flags_now() == {}


def test_a_study_rewritten_in_place_is_found_by_a_background_sweep_not_by_the_request(
        trained_studies: Callable[..., Path]) -> None:
    """A request that finds the sweep due answers with the flags it has and starts the sweep in a thread (a
    sweep stats, and may read or hash, every labelled study: tens of ms at thousands of studies, which every
    annotator behind the request would wait for); the sweep's finding is in the answers soon after."""
    studies = trained_studies()
    stack = Labelled(studies)
    stack.label("study_00", 5)
    stack.label("study_01", 5)
    assert stack.flags_now() == {}
    shutil.copy(studies / "study_02.nii.gz", studies / "study_01.nii.gz")  # same name, another scan
    stack.flags._flags = stack.flags._flags._replace(swept_at=0.0)          # a sweep is due
    assert stack.flags.flags() == {}                                        # answered at once, as it was
    deadline = time.monotonic() + 30
    while not stack.flags.flags() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(stack.flags.flags()) == {("study_01", 5)}
    assert stack.flags.usable() == {("study_00", 5): "lesion"}


def test_an_unreadable_study_flags_its_labels_with_the_reason(trained_studies: Callable[..., Path]) -> None:
    studies = trained_studies()
    stack = Labelled(studies)
    stack.label("study_00", 1)
    (studies / "study_00.nii.gz").write_bytes(b"\x1f\x8b broken gzip")
    flags = stack.flags_now()
    assert "cannot be read now" in flags[("study_00", 1)]


def test_flags_say_why_a_label_no_longer_fits() -> None:
    then = Fingerprint(Stamp(100, 1, 1, 7), "aaa")
    record = {"image": "a", "slice": 9, "class": "normal", "study": then.to_dict()}
    assert flag_of(record, StudyState(exists=True, n_slices=10, fingerprint=then)) is None
    touched = Fingerprint(Stamp(100, 2, 2, 7), "aaa")
    assert flag_of(record, StudyState(exists=True, n_slices=10, fingerprint=touched)) is None
    assert StudyState(exists=True, fingerprint=Fingerprint(touched.stamp)).needs_hash([record])
    changed = Fingerprint(Stamp(100, 2, 2, 8), "bbb")
    assert "changed since" in flag_of(record, StudyState(exists=True, n_slices=10, fingerprint=changed))
    assert "now has 5 slice(s)" in flag_of(record, StudyState(exists=True, n_slices=5, fingerprint=then))
    assert "cannot be read" in flag_of(record, StudyState(exists=True, error="cut short"))
    assert "no longer in the studies folder" in flag_of(record, StudyState(exists=False))
    legacy = {"image": "a", "slice": 1, "class": "normal"}  # written before fingerprints: judged by range only
    assert flag_of(legacy, StudyState(exists=True, n_slices=10, fingerprint=changed)) is None


def test_a_label_stamped_on_a_detached_header_alone_is_not_flagged_by_the_new_stamp() -> None:
    """Labels given before a ``.nhdr`` study's data file counted in its fingerprint recorded the header alone
    (one file): the same header with its data file now is judged by range, not flagged as changed; a real change
    recorded the new way still is."""
    header_only = Fingerprint(Stamp(300, 1, 1, 42, 1), "aaa")
    with_data = Fingerprint(Stamp(9000, 2, 2, 42, 2), "bbb")
    old_record = {"image": "scan", "slice": 3, "class": "lesion", "study": header_only.to_dict()}
    assert flag_of(old_record, StudyState(exists=True, n_slices=10, fingerprint=with_data)) is None
    assert "no longer exists" in flag_of({**old_record, "slice": 12},
                                         StudyState(exists=True, n_slices=10, fingerprint=with_data))
    new_record = {**old_record, "study": with_data.to_dict()}
    rewritten = Fingerprint(Stamp(9000, 3, 3, 42, 2), "ccc")
    assert "changed since" in flag_of(new_record, StudyState(exists=True, n_slices=10, fingerprint=rewritten))
