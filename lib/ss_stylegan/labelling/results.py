"""Typed answers of the labelling service; the app turns them into its JSON shapes (``monailabel_app/lib/answers.py``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ss_stylegan.config import SliceConfig
from ss_stylegan.labelling.findings import Finding, StudyRule

WORLD_DECIMALS = 3
WORLD_NOISE_MM = 2e-5
"""World coordinates (mm) within :data:`WORLD_NOISE_MM` of a whole micrometre are answered as that micrometre:
a volume's affine is stored in float32 (NIfTI), so 0 comes out of the arithmetic as 9.1e-06 and 42.5 as
42.500004; that noise is dropped. Any other value is answered exactly, so a viewer that recomputes the same
voxel plane from the same affine (3D Slicer, on an oblique volume) lands on it."""


def world_values(values: Any) -> Any:
    """:func:`world_mm` of an array of any shape (a float array back)."""
    v = np.asarray(values, dtype=float)
    snapped = np.round(v, WORLD_DECIMALS)
    return np.where(np.abs(v - snapped) <= WORLD_NOISE_MM, snapped, v) + 0.0


def world_mm(values: Any) -> tuple[float, float, float]:
    """A world RAS position (mm) as answered: float noise below the affine's precision dropped (never ``-0.0``)."""
    x, y, z = (float(v) for v in world_values(values))
    return x, y, z


@dataclasses.dataclass(frozen=True)
class LabellingConfig:
    """What the labelling service needs from a server's settings.

    Args:
        classes: slice class names, the first one the normal class.
        slice_cfg: how slices are read (the training's).
        device: where the published encoder runs for new studies and uploads.
        random_state: seed of the first FPS pick and of random suggestions.
        suggestion_ttl_s: seconds a suggested slice stays reserved for its client.
        suggestion_cap: most reservations one owner may hold.
        study_rule: when a study is positive for a class (None: the first class is the background, and the
            defaults of :class:`~ss_stylegan.labelling.findings.StudyRule`).
        strategy: the default suggestion strategy (``/activelearning/`` of the app's default; every strategy
            of :data:`~ss_stylegan.labelling.methods.STRATEGIES` can be asked for by name).
        classifier: the classifier of every answer (:data:`~ss_stylegan.labelling.methods.CLASSIFIERS`).
    """

    classes: tuple[str, ...]
    slice_cfg: SliceConfig
    device: str = "cpu"
    random_state: int = 0
    suggestion_ttl_s: float = 600.0
    suggestion_cap: int = 32
    study_rule: StudyRule | None = None
    strategy: str = "typiclust"
    classifier: str = "nn_map"

    def rule(self) -> StudyRule:
        return self.study_rule if self.study_rule is not None else StudyRule.of(self.classes)


@dataclasses.dataclass(frozen=True)
class Suggestion:
    """One slice to label: where it is in the map and in the scanner, and why it was picked."""

    image: str
    slice: int
    position: tuple[float, float]
    world: tuple[float, float, float]
    distance: float | None
    reason: str
    strategy: str


@dataclasses.dataclass(frozen=True)
class Suggestions:
    """The picks of one request; none (with ``message``) when nothing is left to suggest now."""

    picks: list[Suggestion]
    message: str
    n_labelled: int


@dataclasses.dataclass(frozen=True)
class SliceClass:
    """The 1-NN class of one slice, with its labelled neighbour in the map."""

    slice: int
    label: str
    score: float
    scores: dict[str, float]
    neighbour_image: str
    neighbour_slice: int
    distance: float
    position: tuple[float, float]
    world: tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class StudyClassification:
    """Every embedded slice of a study classified, and where each finding is: for each class other than the
    background, its slices in runs and whether the study is positive for it (several classes can be).

    ``volume_class`` is kept for clients that read one class: the background when the study is positive for no
    class, else the positive class with the most slices; ``positive`` lists them all."""

    image: str | None
    model_version: str
    slices: list[SliceClass]
    summary: dict[str, int]
    volume_class: str
    n_slices: int | None
    labelled_classes: list[str]
    warning: str | None = None
    findings: list[Finding] = dataclasses.field(default_factory=list)
    positive: list[str] = dataclasses.field(default_factory=list)
    study_summary: str = ""
    rule: StudyRule | None = None
    classifier: str = "nn_map"      # the classifier that answered
    label_version: int = 0          # the label state it reflects (the label store's version)


@dataclasses.dataclass(frozen=True)
class MapPoints:
    """Every embedded slice of a study in the folder, column-wise."""

    model_version: str
    image: list[str]
    slice: list[int]
    x: list[float]
    y: list[float]
    world: list[list[float]]
    label: list[str | None]
    prediction: list[str | None]
    score: list[float | None]
    classifier: str | None = None   # the classifier of the predictions (None: no label yet)
    label_version: int = 0


@dataclasses.dataclass(frozen=True)
class ServiceStatus:
    """What the ``ss_stylegan`` block of ``GET /info/`` reports, before the app adds its settings."""

    state: str
    message: str
    n_slices: int
    n_images_embedded: int
    n_labelled: int
    flagged: list[dict[str, Any]]
    changed: list[str]
    model_version: str | None
    map: dict[str, Any] | None
    progress: dict[str, Any]
    errors: dict[str, str]
    embedding: list[str]
    ignored_files: list[str]
    problems: list[str] = dataclasses.field(default_factory=list)
    storage: dict[str, Any] = dataclasses.field(default_factory=dict)
