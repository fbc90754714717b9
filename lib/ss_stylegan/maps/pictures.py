"""A picture of a slice map a person can read: every slice as a dot, once coloured by its label and once by the
class the classifier gives it, with a title naming the map version and how far its model was trained."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from ss_stylegan.labelling.errors import NotFoundError
from ss_stylegan.labelling.results import MapPoints
from ss_stylegan.maps.slice_map import MapVersion

UNLABELLED = "#c8c8c8"
MAX_DRAWN = 50_000   # slices drawn at most (a seeded sample beyond; labelled slices always)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def class_colours(classes: Sequence[str]) -> dict[str, str]:
    """One colour per class, in the configured class order (the same colours in both panels)."""
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(classes)}


def drawn_rows(labelled: np.ndarray, max_drawn: int | None = None, seed: int = 0) -> np.ndarray:
    """Rows of a map to draw: a seeded sample of ``max_drawn`` (default :data:`MAX_DRAWN`) and every labelled
    row (``labelled``: bool per row), in map order. A picture, not a census: drawing a million dots takes
    seconds and shows no more."""
    n = len(labelled)
    limit = MAX_DRAWN if max_drawn is None else max_drawn
    if n <= limit:
        return np.arange(n)
    keep = np.zeros(n, dtype=bool)
    keep[np.random.default_rng(seed).choice(n, limit, replace=False)] = True
    return np.flatnonzero(keep | np.asarray(labelled, dtype=bool))


def map_picture(xy: np.ndarray, labels: Sequence[str | None], predictions: Sequence[str | None] | None,
                classes: Sequence[str], title: str) -> bytes:
    """PNG of the map: left, labelled slices coloured by their class over the unlabelled ones in grey; right,
    every slice coloured by its predicted class (or a note when nothing is labelled yet)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    colours = class_colours(classes)
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    labelled = np.array([lab is not None for lab in labels], dtype=bool)
    n_all, n_labelled = len(xy), int(labelled.sum())
    if n_all > MAX_DRAWN:
        rows = drawn_rows(labelled)
        xy, labelled = xy[rows], labelled[rows]
        labels = [labels[i] for i in rows]
        predictions = None if predictions is None else [predictions[i] for i in rows]
        title += f" ({len(rows):,} of {n_all:,} slices drawn)"
    size = max(1.0, min(12.0, 6000.0 / max(len(xy), 1)))
    fig, axes = plt.subplots(1, 2, figsize=(12, 6), dpi=100)
    ax = axes[0]
    ax.scatter(xy[~labelled, 0], xy[~labelled, 1], s=size, c=UNLABELLED, linewidths=0, label="not labelled")
    for name in classes:
        rows = np.array([lab == name for lab in labels], dtype=bool)
        if rows.any():
            ax.scatter(xy[rows, 0], xy[rows, 1], s=max(4 * size, 25), c=colours[name], edgecolors="black",
                       linewidths=0.5, label=f"{name} ({int(rows.sum())})")
    ax.set_title(f"by label: {n_labelled} of {n_all} slices labelled")
    ax.legend(loc="best", fontsize=8, markerscale=1.5)
    ax = axes[1]
    if predictions is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=size, c=UNLABELLED, linewidths=0)
        ax.set_title("by prediction: label a slice of each class first")
    else:
        for name in classes:
            rows = np.array([p == name for p in predictions], dtype=bool)
            if rows.any():
                ax.scatter(xy[rows, 0], xy[rows, 1], s=size, c=colours[name], linewidths=0,
                           label=f"{name} ({int(rows.sum())})")
        ax.set_title("by prediction (every slice)")
        ax.legend(loc="best", fontsize=8, markerscale=3)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


TRAINING_PICTURES = ("samples.png", "reconstructions.png")


def picture_title(version_name: str, model_version: str, training: dict) -> str:
    """``slice map <version>: model <model>, <kimg> kimg / <minutes> min of training (final)``."""
    trained = ""
    if training.get("kimg") is not None:
        trained = f", {training['kimg']:g} kimg / {training.get('minutes', 0):g} min of training"
        trained += " (final)" if training.get("final") else " (training went on)"
    return f"slice map {version_name}: model {model_version}{trained}"


def points_picture(points: MapPoints, classes: Sequence[str], title: str) -> bytes:
    """:func:`map_picture` of a service's map points."""
    xy = np.column_stack([np.asarray(points.x, dtype=float), np.asarray(points.y, dtype=float)])
    predictions = points.prediction if any(p is not None for p in points.prediction) else None
    return map_picture(xy, points.label, predictions, classes, title)


def training_picture(version: MapVersion | None, name: str) -> bytes:
    """One of the training's pictures published with a map version (``samples.png``, ``reconstructions.png``).

    Raises:
        NotFoundError: an unknown picture, no published version, or a version published without it.
    """
    if name not in TRAINING_PICTURES:
        raise NotFoundError(f"no picture {name!r}; the pictures are {list(TRAINING_PICTURES)} and the map "
                            "(GET /slicemap/picture.png)")
    path = version.folder / "pictures" / name if version is not None else None
    if path is None or not path.is_file():
        raise NotFoundError(f"the current map version has no {name} (it was published before pictures were "
                            "kept); the next training publishes one")
    return path.read_bytes()
