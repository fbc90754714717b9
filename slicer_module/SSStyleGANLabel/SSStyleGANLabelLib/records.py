"""Typed records parsed from the server's JSON answers (REST contract in ``docs/ARCHITECTURE.md``).

Parsing happens here and only here: the rest of the package works with these frozen dataclasses, and a
server answer that lacks a field the contract promises raises :class:`ProtocolError` naming the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .errors import ProtocolError

SliceKey = tuple[str, int]
"""A slice is identified by ``(image_id, slice_index)`` (see the data conventions)."""


def _field(payload: Mapping[str, Any], name: str, what: str) -> Any:
    if not isinstance(payload, Mapping) or name not in payload:
        raise ProtocolError(
            f"the server's {what} lacks the field '{name}' (got {_short(payload)}); "
            "is the server the SS-StyleGAN Label app, in a version that matches this module?"
        )
    return payload[name]


def _short(payload: Any, limit: int = 200) -> str:
    text = repr(payload)
    return text if len(text) <= limit else text[:limit] + "..."


def _world(value: Any) -> tuple[float, float, float] | None:
    if value is None:
        return None
    if len(value) != 3:
        raise ProtocolError(f"a world position must have 3 coordinates (R, A, S), got {_short(value)}")
    return (float(value[0]), float(value[1]), float(value[2]))


def _xy(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    if len(value) != 2:
        raise ProtocolError(f"a map position must have 2 coordinates (x, y), got {_short(value)}")
    return (float(value[0]), float(value[1]))


@dataclasses.dataclass(frozen=True)
class ModelState:
    """What ``GET /info/`` says about the server and its SS-StyleGAN model.

    Attributes:
        state: ``"untrained"``, ``"training"``, ``"ready"`` or ``"failed"``.
        classes: the class names slices can be labelled with, in the server's order.
        n_slices: slices in the datastore; n_embedded: slices placed in the map; n_labelled: labelled slices.
        model_version: version string of the model that made the current map (None before training).
        progress: the training progress dict as the server reports it (step, total_steps, ...).
        message: the server's human-readable status line.
        trainers, strategies, classifiers: task names the server offers.
        live_map: which map the server serves and how far its model was trained (``version``,
            ``model_version``, ``training``: ``step``, ``kimg``, ``minutes``, ``final``); None before the
            first map. While training runs the server publishes a new map every few minutes, and
            suggestions and classification use the live one.
    """

    state: str
    classes: tuple[str, ...]
    n_slices: int
    n_embedded: int
    n_labelled: int
    model_version: str | None
    progress: Mapping[str, Any]
    message: str
    trainers: tuple[str, ...]
    strategies: tuple[str, ...]
    classifiers: tuple[str, ...]
    live_map: Mapping[str, Any] | None = None

    @property
    def has_map(self) -> bool:
        """True when a map is live, so suggestions and classification work (also while training goes on)."""
        return self.ready or bool(self.live_map)

    def map_summary(self) -> str:
        """One line on the live map: its version and how far its model trained, e.g.
        ``map 20261122-1608-step00000480: step 480, 7.7 kimg, 15.0 min of training (training goes on)``."""
        if not self.live_map:
            return "no map yet" + (": the first one is published a few minutes into training"
                                   if self.training else "")
        trained = self.live_map.get("training") or {}
        name = self.live_map.get("version") or self.live_map.get("model_version") or "?"
        parts = []
        if trained.get("step") is not None:
            parts.append(f"step {int(trained['step'])}")
        if trained.get("kimg") is not None:
            parts.append(f"{float(trained['kimg']):.1f} kimg")
        if trained.get("minutes") is not None:
            parts.append(f"{float(trained['minutes']):.1f} min of training")
        text = f"map {name}" + (": " + ", ".join(parts) if parts else "")
        if trained.get("final") is False:
            text += " (training goes on; a better map follows)" if self.training else " (training was cut short)"
        return text

    @property
    def ready(self) -> bool:
        """True when suggestions and classification can be asked for."""
        return self.state == "ready"

    @property
    def training(self) -> bool:
        return self.state == "training"

    @property
    def progress_fraction(self) -> float | None:
        """Training progress in [0, 1] when the server reports enough to compute it, else None."""
        prog = self.progress or {}
        if "fraction" in prog and prog["fraction"] is not None:
            return min(1.0, max(0.0, float(prog["fraction"])))
        for done_key, total_key in (("step", "total_steps"), ("images_seen", "total_images"), ("kimg", "total_kimg")):
            done, total = prog.get(done_key), prog.get(total_key)
            if done is not None and total:
                return min(1.0, max(0.0, float(done) / float(total)))
        if self.state == "ready":
            return 1.0
        return None

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> ModelState:
        """Parse the whole ``GET /info/`` answer."""
        ss = _field(info, "ss_stylegan", "/info/ answer")
        classes = tuple(str(c) for c in _field(ss, "classes", "/info/ ss_stylegan section"))
        return cls(
            state=str(_field(ss, "state", "/info/ ss_stylegan section")),
            classes=classes,
            n_slices=int(ss.get("n_slices") or 0),
            n_embedded=int(ss.get("n_embedded") or 0),
            n_labelled=int(ss.get("n_labelled") or 0),
            model_version=None if ss.get("model_version") in (None, "") else str(ss["model_version"]),
            progress=dict(ss.get("progress") or {}),
            message=str(ss.get("message") or ""),
            trainers=tuple(info.get("trainers") or ()),
            strategies=tuple(info.get("strategies") or ()),
            classifiers=tuple(info.get("models") or ()),
            live_map=dict(ss["map"]) if isinstance(ss.get("map"), Mapping) else None,
        )


@dataclasses.dataclass(frozen=True)
class Suggestion:
    """One slice the server suggests labelling next.

    Attributes:
        image: datastore image id; slice: axial slice index (canonical RAS order).
        position: (x, y) in the t-SNE map; world: (R, A, S) centre of the slice in mm, for jumping to it.
        distance: map distance to the nearest labelled / already suggested slice (why it was picked).
        reason: the server's explanation; strategy: the strategy that picked it (``typiclust``, ``fps``, ...).
    """

    image: str
    slice: int
    position: tuple[float, float] | None
    world: tuple[float, float, float] | None
    distance: float | None
    reason: str
    strategy: str

    @property
    def key(self) -> SliceKey:
        return (self.image, self.slice)

    @classmethod
    def from_json(cls, payload: Mapping[str, Any], strategy: str) -> Suggestion:
        distance = payload.get("distance")
        return cls(
            image=str(_field(payload, "id", "suggestion")),
            slice=int(_field(payload, "slice", "suggestion")),
            position=_xy(payload.get("position")),
            world=_world(payload.get("world")),
            distance=None if distance is None else float(distance),
            reason=str(payload.get("reason") or ""),
            strategy=strategy,
        )


@dataclasses.dataclass(frozen=True)
class SliceLabel:
    """A class label stored on the server for one slice."""

    image: str
    slice: int
    class_name: str
    user: str
    timestamp: float | str | None

    @property
    def key(self) -> SliceKey:
        return (self.image, self.slice)

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> SliceLabel:
        return cls(
            image=str(_field(payload, "image", "label record")),
            slice=int(_field(payload, "slice", "label record")),
            class_name=str(_field(payload, "class", "label record")),
            user=str(payload.get("user") or ""),
            timestamp=payload.get("timestamp"),
        )


@dataclasses.dataclass(frozen=True)
class Neighbour:
    """The labelled slice a prediction copied its class from (1-NN in the map)."""

    image: str
    slice: int
    class_name: str
    distance: float


@dataclasses.dataclass(frozen=True)
class SlicePrediction:
    """The classifier's answer for one slice of a study."""

    slice: int
    class_name: str
    score: float
    neighbour: Neighbour | None
    world: tuple[float, float, float] | None

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> SlicePrediction:
        nb = payload.get("neighbour")
        neighbour = None
        if nb:
            neighbour = Neighbour(
                image=str(_field(nb, "image", "neighbour")),
                slice=int(_field(nb, "slice", "neighbour")),
                class_name=str(_field(nb, "class", "neighbour")),
                distance=float(nb.get("distance") or 0.0),
            )
        return cls(
            slice=int(_field(payload, "slice", "slice prediction")),
            class_name=str(_field(payload, "class", "slice prediction")),
            score=float("nan") if payload.get("score") is None else float(payload["score"]),
            neighbour=neighbour,
            world=_world(payload.get("world")),
        )


@dataclasses.dataclass(frozen=True)
class FindingRun:
    """Adjacent slices of a study predicted as one class (``findings[].runs[]`` of a classification)."""

    class_name: str
    first_slice: int
    last_slice: int
    n_slices: int
    z_mm: tuple[float, float] | None
    peak_score: float
    peak_slice: int

    @property
    def slices_text(self) -> str:
        if self.first_slice == self.last_slice:
            return str(self.first_slice)
        return f"{self.first_slice}\u2013{self.last_slice}"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One class other than the background in one study: positive or not, its slices and its runs."""

    class_name: str
    positive: bool
    n_slices: int
    runs: tuple[FindingRun, ...]

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> Finding:
        name = str(_field(payload, "class", "finding"))
        runs = tuple(FindingRun(
            class_name=name, first_slice=int(_field(r, "first_slice", "run")),
            last_slice=int(_field(r, "last_slice", "run")), n_slices=int(_field(r, "n_slices", "run")),
            z_mm=tuple(float(v) for v in r["z_mm"]) if r.get("z_mm") else None,  # type: ignore[arg-type]
            peak_score=float(_field(r, "peak_score", "run")), peak_slice=int(_field(r, "peak_slice", "run")),
        ) for r in payload.get("runs") or ())
        return cls(class_name=name, positive=bool(payload.get("positive")), n_slices=int(payload.get("n_slices") or 0),
                   runs=runs)


@dataclasses.dataclass(frozen=True)
class Classification:
    """Per-slice classes of one study and where each finding is (``POST /infer/classify``).

    Attributes:
        image: the image id classified (or the uploaded file's name for a study outside the datastore).
        slices: one prediction per classified slice, in slice order.
        summary: number of slices per class.
        volume_class: the one class the server reports for the study (None when it gives none); ``positive``
            lists every class the study is positive for.
        findings: each class other than the background, with its runs of adjacent slices.
        positive: the classes the study is positive for (none: a negative study).
        study_summary: the server's one line, e.g. "lesion in slices 39–48 (10 slices)".
        classifier: the server's classifier that answered (``nn_map``: 1-NN in the map; or one in W).
    """

    image: str
    slices: tuple[SlicePrediction, ...]
    summary: Mapping[str, int]
    volume_class: str | None
    findings: tuple[Finding, ...] = ()
    positive: tuple[str, ...] = ()
    study_summary: str = ""
    classifier: str = "nn_map"

    def runs(self) -> list[FindingRun]:
        """Every run of every finding, positive findings first, then by first slice."""
        positive = set(self.positive)
        return sorted((r for f in self.findings for r in f.runs),
                      key=lambda r: (r.class_name not in positive, r.first_slice))

    def class_of(self, slice_index: int) -> str | None:
        """The predicted class of one slice, or None when that slice was not classified (e.g. empty)."""
        for pred in self.slices:
            if pred.slice == slice_index:
                return pred.class_name
        return None

    def prediction(self, slice_index: int) -> SlicePrediction | None:
        for pred in self.slices:
            if pred.slice == slice_index:
                return pred
        return None

    @classmethod
    def from_json(cls, payload: Mapping[str, Any], image: str) -> Classification:
        slices = tuple(
            sorted(
                (SlicePrediction.from_json(s) for s in _field(payload, "slices", "classification")),
                key=lambda p: p.slice,
            )
        )
        summary = {str(k): int(v) for k, v in dict(payload.get("summary") or {}).items()}
        volume_class = payload.get("volume_class")
        return cls(
            image=image,
            slices=slices,
            summary=summary,
            volume_class=None if volume_class is None else str(volume_class),
            findings=tuple(Finding.from_json(f) for f in payload.get("findings") or ()),
            positive=tuple(str(c) for c in payload.get("positive") or ()),
            study_summary=str(payload.get("study_summary") or ""),
            classifier=str(payload.get("classifier") or "nn_map"),
        )
