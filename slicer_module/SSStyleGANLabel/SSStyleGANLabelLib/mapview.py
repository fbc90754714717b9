"""Data behind the t-SNE map plot: points, their colours, the highlighted slices, and click picking.

Nothing here draws with Qt: the Slicer widget asks :class:`MapScene` where to put each dot in pixels and which
slice a click at a pixel means. :func:`render_png` draws the same picture with matplotlib when it is installed
(Slicer can ``pip_install('matplotlib')``); the widget falls back to ``qt.QGraphicsScene`` otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ProtocolError
from .records import SliceKey

# Colour-blind-safe class palette (Okabe-Ito), RGB in [0, 1]; unlabelled points are light grey.
CLASS_PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.000, 0.447, 0.698),  # blue
    (0.835, 0.369, 0.000),  # vermillion
    (0.000, 0.620, 0.451),  # bluish green
    (0.800, 0.475, 0.655),  # reddish purple
    (0.941, 0.894, 0.259),  # yellow
    (0.337, 0.706, 0.914),  # sky blue
    (0.902, 0.624, 0.000),  # orange
    (0.000, 0.000, 0.000),  # black
)
UNLABELLED_RGB = (0.80, 0.80, 0.80)
SUGGESTION_RGB = (0.90, 0.10, 0.10)
CURRENT_RGB = (1.00, 0.85, 0.00)
COLOUR_MODES = ("label", "prediction")


def class_colour(class_name: str | None, classes: Sequence[str]) -> tuple[float, float, float]:
    """RGB in [0, 1] of a class (grey for None or a class not in ``classes``)."""
    if class_name is None or class_name not in classes:
        return UNLABELLED_RGB
    return CLASS_PALETTE[list(classes).index(class_name) % len(CLASS_PALETTE)]


@dataclasses.dataclass(frozen=True)
class MapPoints:
    """Every embedded slice in the 2-D map (``GET /slicemap/``).

    Attributes:
        images: image id per point, str ``[N]``; slices: slice index per point, int64 ``[N]``.
        xy: map coordinates, float64 ``[N, 2]``.
        labels: stored class per point or None, object ``[N]``.
        predictions: 1-NN class per point or None, object ``[N]``; scores: float64 ``[N]`` (NaN when none).
        model_version: version of the model that made the map.
        worlds: world (R, A, S) centre of each slice in mm, float64 ``[N, 3]`` (NaN rows when the server
            did not send positions).
    """

    images: np.ndarray
    slices: np.ndarray
    xy: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    scores: np.ndarray
    model_version: str | None
    worlds: np.ndarray

    def __len__(self) -> int:
        return int(self.xy.shape[0])

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> MapPoints:
        """Parse the ``/slicemap/`` answer; every per-point list must have the same length."""
        if not isinstance(payload, Mapping) or "points" not in payload:
            raise ProtocolError("the /slicemap/ answer has no 'points'; is the model trained?")
        pts = payload["points"]
        for name in ("image", "slice", "x", "y"):
            if name not in pts:
                raise ProtocolError(f"the /slicemap/ points lack the field '{name}'")
        n = len(pts["x"])
        lengths = {name: len(pts[name]) for name in ("image", "slice", "x", "y", "label", "prediction", "score")
                   if pts.get(name) is not None}
        if any(length != n for length in lengths.values()):
            raise ProtocolError(f"the /slicemap/ point lists have different lengths: {lengths}")

        def optional(name: str) -> np.ndarray:
            values = pts.get(name)
            out = np.empty(n, dtype=object)
            out[:] = [None] * n if values is None else [None if v in (None, "") else str(v) for v in values]
            return out

        raw_scores = pts.get("score") or [None] * n
        worlds = np.full((n, 3), np.nan)
        if pts.get("world") is not None:
            worlds = np.asarray(pts["world"], dtype=np.float64)
            if worlds.shape != (n, 3):
                raise ProtocolError(f"the /slicemap/ world positions must be {n} x (R, A, S), got {worlds.shape}")
        return cls(
            images=np.asarray([str(i) for i in pts["image"]], dtype=str).reshape(n),
            slices=np.asarray(pts["slice"], dtype=np.int64).reshape(n),
            xy=np.stack([np.asarray(pts["x"], dtype=np.float64), np.asarray(pts["y"], dtype=np.float64)], axis=1)
            .reshape(n, 2),
            labels=optional("label"),
            predictions=optional("prediction"),
            scores=np.asarray([np.nan if s is None else float(s) for s in raw_scores], dtype=np.float64),
            model_version=payload.get("model_version"),
            worlds=worlds,
        )

    def with_labels(self, labels: Mapping[SliceKey, str]) -> MapPoints:
        """A copy whose label column shows ``labels`` (the session's mirror, newer than the fetched map)."""
        new = np.array([labels.get((str(i), int(s))) for i, s in zip(self.images, self.slices)], dtype=object)
        return dataclasses.replace(self, labels=new)

    def key(self, index: int) -> SliceKey:
        """``(image_id, slice_index)`` of point ``index``."""
        return (str(self.images[index]), int(self.slices[index]))

    def world_positions(self) -> dict[SliceKey, tuple[float, float, float]]:
        """``(image, slice) -> (R, A, S)`` of every point whose world position the server sent."""
        known = np.flatnonzero(np.isfinite(self.worlds).all(axis=1))
        return {self.key(i): (float(self.worlds[i, 0]), float(self.worlds[i, 1]), float(self.worlds[i, 2]))
                for i in known}

    def index_of(self, image: str, slice_index: int) -> int | None:
        """Point index of a slice, or None when the slice is not in the map (e.g. skipped as empty)."""
        hits = np.flatnonzero((self.images == image) & (self.slices == int(slice_index)))
        return int(hits[0]) if hits.size else None

    def nearest(self, x: float, y: float, max_distance: float | None = None) -> int | None:
        """Index of the point nearest to map position ``(x, y)``; None when the map is empty or all are too far."""
        if len(self) == 0:
            return None
        d2 = np.sum((self.xy - np.array([x, y], dtype=np.float64)) ** 2, axis=1)
        best = int(np.argmin(d2))
        if max_distance is not None and d2[best] > max_distance**2:
            return None
        return best

    def colours(self, mode: str, classes: Sequence[str]) -> np.ndarray:
        """RGB in [0, 1] per point, float64 ``[N, 3]``, coloured by ``"label"`` or ``"prediction"``.

        In prediction mode a labelled slice shows its label (the truth the prediction is built from).
        """
        if mode not in COLOUR_MODES:
            raise ValueError(f"colour mode must be one of {COLOUR_MODES}, got {mode!r}")
        values = self.labels if mode == "label" else np.where(self.labels != None, self.labels, self.predictions)  # noqa: E711
        return np.array([class_colour(v, classes) for v in values], dtype=np.float64).reshape(len(self), 3)


@dataclasses.dataclass(frozen=True)
class MapScene:
    """The map laid out in a ``width`` x ``height`` pixel view (y grows downwards, as in Qt).

    Attributes:
        points: the map points; classes: class names (fixes the colours).
        width, height: view size in pixels; margin: empty border in pixels.
        mode: ``"label"`` or ``"prediction"`` colouring.
        highlighted: slices to ring (pending suggestions); current: the slice shown in the viewer.
    """

    points: MapPoints
    classes: tuple[str, ...]
    width: int
    height: int
    margin: int = 12
    mode: str = "label"
    highlighted: tuple[SliceKey, ...] = ()
    current: SliceKey | None = None

    def _bounds(self) -> tuple[np.ndarray, float]:
        if len(self.points) == 0:
            return np.zeros(2), 1.0
        lo, hi = self.points.xy.min(axis=0), self.points.xy.max(axis=0)
        span = float(max(hi[0] - lo[0], hi[1] - lo[1], 1e-9))
        inner = max(min(self.width, self.height) - 2 * self.margin, 1)
        return lo, inner / span

    def to_pixels(self, xy: np.ndarray) -> np.ndarray:
        """Map coordinates ``[M, 2]`` -> pixel coordinates ``[M, 2]`` (same scale on both axes, y flipped)."""
        lo, scale = self._bounds()
        px = (np.asarray(xy, dtype=np.float64).reshape(-1, 2) - lo) * scale + self.margin
        px[:, 1] = self.height - px[:, 1]
        return px

    def to_map(self, px: float, py: float) -> tuple[float, float]:
        """Pixel ``(px, py)`` -> map coordinates (inverse of :meth:`to_pixels`)."""
        lo, scale = self._bounds()
        return ((px - self.margin) / scale + lo[0], (self.height - py - self.margin) / scale + lo[1])

    def pick(self, px: float, py: float, radius_px: float = 8.0) -> SliceKey | None:
        """The slice under a click at pixel ``(px, py)``, or None when no dot is within ``radius_px``."""
        if len(self.points) == 0:
            return None
        _, scale = self._bounds()
        x, y = self.to_map(px, py)
        index = self.points.nearest(x, y, max_distance=radius_px / scale)
        return None if index is None else self.points.key(index)

    def dots(self) -> list[dict[str, Any]]:
        """One dict per point to draw, in drawing order (plain dots first, highlighted, then current on top).

        Each dict has ``x``, ``y`` (pixels), ``rgb`` (0-255 ints), ``radius`` (pixels), ``ring`` (an RGB
        0-255 outline colour or None) and ``key`` (image id, slice index).
        """
        pix = self.to_pixels(self.points.xy)
        colours = np.round(self.points.colours(self.mode, self.classes) * 255).astype(int)
        marked = {k: i for i, k in enumerate(self.highlighted)}
        base, rings, top = [], [], []
        for i in range(len(self.points)):
            key = self.points.key(i)
            dot = {"x": float(pix[i, 0]), "y": float(pix[i, 1]), "rgb": tuple(int(c) for c in colours[i]),
                   "radius": 3.0, "ring": None, "key": key}
            if key == self.current:
                dot.update(radius=6.0, ring=_rgb255(CURRENT_RGB))
                top.append(dot)
            elif key in marked:
                dot.update(radius=5.0, ring=_rgb255(SUGGESTION_RGB))
                rings.append(dot)
            else:
                base.append(dot)
        return base + rings + top

    def legend(self) -> list[tuple[str, tuple[int, int, int]]]:
        """(text, RGB 0-255) entries explaining the colours."""
        entries = [(name, _rgb255(class_colour(name, self.classes))) for name in self.classes]
        entries.append(("unlabelled", _rgb255(UNLABELLED_RGB)))
        entries.append(("suggested (ring)", _rgb255(SUGGESTION_RGB)))
        entries.append(("current slice (ring)", _rgb255(CURRENT_RGB)))
        return entries


def _rgb255(rgb: Iterable[float]) -> tuple[int, int, int]:
    r, g, b = (int(round(255 * c)) for c in rgb)
    return (r, g, b)


def matplotlib_available() -> bool:
    """Whether :func:`render_png` can run (matplotlib importable)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def render_png(scene: MapScene, path: str | Path, dpi: int = 100) -> Path:
    """Draw the map with matplotlib into a PNG of ``scene.width`` x ``scene.height`` pixels.

    Pixel coordinates of the PNG equal those of :class:`MapScene`, so ``scene.pick`` works on clicks on it.

    Raises:
        ImportError: matplotlib is not installed (use the Qt drawing instead).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(scene.width / dpi, scene.height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, scene.width)
    ax.set_ylim(scene.height, 0)
    ax.set_axis_off()
    dots = scene.dots()
    if dots:
        xy = np.array([[d["x"], d["y"]] for d in dots])
        fill = np.array([d["rgb"] for d in dots]) / 255.0
        sizes = np.array([(2 * d["radius"] * 72.0 / dpi) ** 2 for d in dots])
        edges = np.array([(d["ring"] if d["ring"] else d["rgb"]) for d in dots]) / 255.0
        widths = np.array([1.5 if d["ring"] else 0.0 for d in dots])
        ax.scatter(xy[:, 0], xy[:, 1], s=sizes, c=fill, edgecolors=edges, linewidths=widths)
    handles = [
        Line2D([], [], marker="o", linestyle="", color=np.array(rgb) / 255.0, label=text)
        for text, rgb in scene.legend()
    ]
    ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=dpi)
    return path
