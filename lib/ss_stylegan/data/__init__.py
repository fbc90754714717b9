"""Slices from studies: readers (:mod:`.readers`), windowing and resizing (:mod:`.preprocess`),
the memory-mapped :class:`~ss_stylegan.data.cache.SliceCache` (:mod:`.cache`) and synthetic
CT-like studies (:mod:`.synthetic`)."""

from __future__ import annotations

from ss_stylegan.data.cache import (
    SkippedStudy,
    SliceCache,
    SliceCacheError,
    Study,
    StudySlices,
    StudySummary,
    find_studies,
    read_study_slices,
)
from ss_stylegan.data.readers import StudyReadError, Volume, read_volume

__all__ = [
    "SliceCache",
    "SliceCacheError",
    "Study",
    "SkippedStudy",
    "StudyReadError",
    "StudySlices",
    "StudySummary",
    "Volume",
    "find_studies",
    "read_study_slices",
    "read_volume",
]
