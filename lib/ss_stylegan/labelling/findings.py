"""A study's answer from its slices' classes: where each finding is, not which class most slices have.

Lesions are a minority of a scan's slices, so the class of most slices calls nearly every diseased scan
normal. Here each class other than the *background* class (the first class unless set) is reported on its
own: the slices predicted as it, grouped into *runs* of adjacent slices (first and last slice, world z-range,
the peak score and its slice), and whether the study is *positive* for it. A study is positive for a class
when one of its runs reaches ``min_slices`` slices, counting only slices whose score for the class is at least
``min_score``. A study can be positive for several classes at once; there is no single winner.

The evaluation (``python -m ss_stylegan.evaluate``) measures this rule at study level against the majority of
the slices (:func:`majority_class`), and the server's defaults are the settings it found best.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from ss_stylegan.labelling.label_values import csv_cell

# chosen by the study-level evaluation on IQ-OTH/NCCD (docs/evaluation/study_level.md): the best balanced
# accuracy over k = 10, 20, 50 and both scopes
DEFAULT_MIN_SLICES = 1
DEFAULT_MIN_SCORE = 0.6


@dataclasses.dataclass(frozen=True)
class StudyRule:
    """When a study is positive for a class.

    Attributes:
        background: the class that is no finding (e.g. ``normal``).
        min_slices: slices a run must reach.
        min_score: the score for the class a slice needs to count in a run.
    """

    background: str
    min_slices: int = DEFAULT_MIN_SLICES
    min_score: float = DEFAULT_MIN_SCORE

    @classmethod
    def of(cls, classes: Sequence[str], background: str | None = None, min_slices: int = DEFAULT_MIN_SLICES,
           min_score: float = DEFAULT_MIN_SCORE) -> StudyRule:
        """The rule for ``classes`` (background: the first class unless given).

        Raises:
            ValueError: a background that is not a class, or a setting out of range (the message names it).
        """
        background = classes[0] if background is None else background
        if background not in classes:
            raise ValueError(f"background_class must be one of the classes {list(classes)}, got {background!r}")
        return cls(str(background), int(min_slices), float(min_score))

    def __post_init__(self) -> None:
        if self.min_slices < 1:
            raise ValueError(f"study_min_slices must be >= 1, got {self.min_slices}")
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"study_min_score must be between 0 and 1, got {self.min_score}")


@dataclasses.dataclass(frozen=True)
class Run:
    """Adjacent slices of a study predicted as one class (slices that were not classified, e.g. blank ones
    the map skips, do not break a run)."""

    first_slice: int
    last_slice: int
    n_slices: int
    z_mm: tuple[float, float] | None
    peak_score: float
    peak_slice: int


@dataclasses.dataclass(frozen=True)
class Finding:
    """One class other than the background in one study."""

    class_name: str
    n_slices: int
    positive: bool
    runs: list[Run]


def find_runs(slices: np.ndarray, member: np.ndarray, score: np.ndarray, z: np.ndarray | None) -> list[Run]:
    """Runs of consecutive ``member`` slices, in the order of ``slices``.

    Args:
        slices: ``[N]`` slice indices of the classified slices, ascending.
        member: ``[N]`` bool, the slice belongs to the class (predicted as it, with enough score).
        score: ``[N]`` the slices' scores for the class.
        z: ``[N]`` world z (mm) of each slice, or None.
    """
    runs: list[Run] = []
    start = None
    for i in range(len(slices) + 1):
        inside = i < len(slices) and bool(member[i])
        if inside and start is None:
            start = i
        elif not inside and start is not None:
            part = slice(start, i)
            peak = start + int(np.argmax(score[part]))
            runs.append(Run(first_slice=int(slices[start]), last_slice=int(slices[i - 1]), n_slices=i - start,
                            z_mm=(float(np.min(z[part])), float(np.max(z[part]))) if z is not None else None,
                            peak_score=float(score[peak]), peak_slice=int(slices[peak])))
            start = None
    return runs


def study_findings(slices: Sequence[int] | np.ndarray, labels: Sequence[str], scores: dict[str, np.ndarray],
                   classes: Sequence[str], rule: StudyRule, z: Sequence[float] | np.ndarray | None = None
                   ) -> list[Finding]:
    """The finding of every class but the background, in the order of ``classes``.

    Args:
        slices: slice index of each classified slice (any order).
        labels: predicted class of each.
        scores: ``{class: [N] score}`` (a class missing here scores 0: it has no label yet).
        classes: every configured class.
        rule: when a study is positive.
        z: world z (mm) of each slice.
    """
    slices = np.asarray(slices, dtype=np.int64)
    order = np.argsort(slices, kind="stable")
    slices = slices[order]
    labels_arr = np.asarray(list(labels), dtype=object)[order]
    z_arr = np.asarray(z, dtype=np.float64)[order] if z is not None and len(slices) else None
    out = []
    for cls in classes:
        if cls == rule.background:
            continue
        score = np.asarray(scores.get(cls, np.zeros(len(order))), dtype=np.float64)[order]
        predicted = labels_arr == cls
        counted = find_runs(slices, predicted & (score >= rule.min_score), score, z_arr)
        out.append(Finding(class_name=cls, n_slices=int(predicted.sum()),
                           positive=any(r.n_slices >= rule.min_slices for r in counted), runs=counted))
    return out


def _ranges(runs: list[Run]) -> str:
    parts = [f"{r.first_slice}" if r.first_slice == r.last_slice else f"{r.first_slice}\u2013{r.last_slice}"
             for r in runs]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def summary_text(findings: list[Finding], rule: StudyRule) -> str:
    """One line a reader can act on: ``"lesion in slices 39–48 and 86–106 (31 slices)"``, or why negative."""
    positive = [f for f in findings if f.positive]
    if positive:
        return "; ".join(
            f"{f.class_name} in slice{'s' if len(f.runs) > 1 or f.runs[0].n_slices > 1 else ''} {_ranges(f.runs)} "
            f"({sum(r.n_slices for r in f.runs)} slice{'s' if sum(r.n_slices for r in f.runs) != 1 else ''})"
            for f in positive)
    names = " or ".join(f.class_name for f in findings) or "finding"
    below = [f"{f.class_name} in {f.n_slices} slice{'s' if f.n_slices != 1 else ''}" for f in findings if f.n_slices]
    where = "any slice" if rule.min_slices == 1 else f"{rule.min_slices} adjacent slices"
    score = f" with score >= {rule.min_score:g}" if rule.min_score > 0 else ""
    text = f"{rule.background}: no {names} in {where}{score}"
    return text + (f" (below that: {', '.join(below)})" if below else "")


def positive_classes(findings: list[Finding]) -> list[str]:
    return [f.class_name for f in findings if f.positive]


def majority_class(labels: Sequence[str], classes: Sequence[str]) -> str:
    """The class of most slices (ties: the earlier class): the rule a slice majority would give."""
    counts = {c: 0 for c in classes}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return max(counts, key=lambda c: counts[c])


STUDY_CSV_FIELDS = ("image", "class", "positive", "n_slices", "runs", "z_mm", "peak_score", "peak_slice",
                    "study_summary", "error")


def study_rows(image_id: str, result: Any) -> list[list[Any]]:
    """The per-study CSV rows of one study's answer (a ``StudyClassification``): one per class other than
    the background, runs as ``first-last`` joined by ``;``; text cells made formula-safe."""
    rows = []
    for f in result.findings:
        peak = max(f.runs, key=lambda r: r.peak_score) if f.runs else None
        rows.append([
            csv_cell(image_id), csv_cell(f.class_name), f.positive, f.n_slices,
            ";".join(f"{r.first_slice}-{r.last_slice}" for r in f.runs),
            ";".join(f"{r.z_mm[0]:.1f}..{r.z_mm[1]:.1f}" for r in f.runs if r.z_mm is not None),
            f"{peak.peak_score:.4f}" if peak else "", peak.peak_slice if peak else "",
            csv_cell(result.study_summary), ""])
    return rows


def study_error_row(image_id: str, error: str) -> list[Any]:
    """The per-study CSV row of a study that cannot be classified now."""
    return [csv_cell(image_id), *[""] * (len(STUDY_CSV_FIELDS) - 2), csv_cell(error)]
