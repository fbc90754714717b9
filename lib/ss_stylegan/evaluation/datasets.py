"""The evaluation's data: an ``.npz`` of slices, or a folder of volumes with JSON sidecars.

An ``.npz`` holds ``images`` ``[N, R, R]`` uint8, ``labels`` ``[N]`` and optionally ``classes`` and
``groups`` (the scan of each slice). A folder holds volumes read by :mod:`ss_stylegan.data.readers` (so in
the server's canonical RAS orientation) with one JSON sidecar each (``slices``: per-slice ``label``,
``group``), slice ``j`` being the ``j``-th axial slice of the canonical array.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

class EvaluationError(ValueError):
    """The evaluation cannot run on the given data or options; the message says why."""


@dataclasses.dataclass
class Dataset:
    """Slices with labels. ``images`` uint8 ``[N, R, R]``, ``labels`` int ``[N]``, ``groups`` ``[N]``."""

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    classes: list[str]
    source: str


# ---------------------------------------------------------------------------------------- data
def load_dataset(path: str | Path, resolution: int | None = None) -> Dataset:
    """Read an npz or a folder of NIfTI volumes + JSON sidecars (see module doc)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as d:
            missing = [k for k in ("images", "labels") if k not in d.files]
            if missing:
                raise EvaluationError(f"{path} lacks {missing}; it has {d.files}")
            images, labels = d["images"], d["labels"].astype(np.int64)
            groups = d["groups"] if "groups" in d.files else np.arange(len(labels)).astype(str)
            classes = [str(c) for c in d["classes"]] if "classes" in d.files else None
    elif path.is_dir():
        images, labels, groups, classes = _read_volumes(path)
    else:
        raise EvaluationError(f"--data must be an .npz file or a folder of NIfTI volumes, got {path}")
    if images.ndim != 3 or images.shape[1] != images.shape[2] or images.shape[0] != labels.shape[0]:
        raise EvaluationError(f"images must be [N, R, R] with one label each, got {images.shape}, {labels.shape}")
    if images.dtype != np.uint8:
        raise EvaluationError(f"images must be uint8 (preprocessed slices), got {images.dtype}")
    if classes is None:
        classes = [str(c) for c in range(int(labels.max()) + 1)]
    if labels.min() < 0 or labels.max() >= len(classes):
        raise EvaluationError(f"labels must lie in [0, {len(classes)}), got {labels.min()}..{labels.max()}")
    if resolution is not None and resolution != images.shape[1]:
        images = _resize(images, resolution)
    return Dataset(images, labels, np.asarray(groups).astype(str), classes, str(path))


def _read_volumes(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str] | None]:
    import nibabel as nib

    files = sorted(p for p in folder.iterdir() if p.name.endswith((".nii.gz", ".nii")))
    if not files:
        raise EvaluationError(f"no .nii / .nii.gz volumes in {folder}")
    images, labels, groups, classes = [], [], [], None
    for f in files:
        stem = f.name[: -len(".nii.gz")] if f.name.endswith(".nii.gz") else f.stem
        sidecar = f.with_name(stem + ".json")
        if not sidecar.is_file():
            raise EvaluationError(f"{f.name} has no sidecar {sidecar.name} with per-slice labels")
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        data = np.asarray(nib.load(str(f)).dataobj)
        slices = meta.get("slices", [])
        if len(slices) != data.shape[2]:
            raise EvaluationError(f"{sidecar.name} describes {len(slices)} slices, {f.name} has {data.shape[2]}")
        for s in slices:
            images.append(np.asarray(data[:, :, int(s["slice"])]))
            labels.append(int(s["label"]))
            groups.append(str(s.get("group", f"{stem}:{s['slice']}")))
        classes = classes or meta.get("classes")
    return np.stack(images).astype(np.uint8), np.array(labels), np.array(groups), classes


def _resize(images: np.ndarray, resolution: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images.astype(np.float32))[:, None]
    y = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return y[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def dataset_meta(data: Dataset) -> dict[str, Any]:
    counts = {c: int((data.labels == i).sum()) for i, c in enumerate(data.classes)}
    return {"source": data.source, "n": int(data.labels.size), "resolution": int(data.images.shape[1]),
            "classes": data.classes, "class_counts": counts, "n_groups": int(np.unique(data.groups).size)}
