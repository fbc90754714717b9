"""CT-like synthetic chest studies with two slice classes, for tests and the README's sample datastore.

Each study is a NIfTI volume in Hounsfield units, ``int16 [size, size, n_slices]`` (x = R, y = A,
z = S) with a RAS affine of realistic spacing (in-plane ``0.7 * 512 / size`` mm, 5 mm slices):
air (-1000) around a body ellipse of soft tissue (+40) with a subcutaneous fat ring (-100), two
lungs (-800) that grow and shrink along z, a bright spine (+700) posteriorly, small vessels in
the lungs and Gaussian noise. Class ``"lesion"`` slices also hold a round dense nodule (+60) in a
lung, in runs of consecutive slices like a real nodule. Vessels are small bright dots on every
slice, so a classifier must tell a nodule from a vessel by size: learnable, not trivial.

A JSON sidecar ``<id>.json`` beside each volume mirrors the layout of the shared IQ-OTH/NCCD
sidecars: ``{"classes": [...], "n_slices", "class_counts", "slices": [{"slice", "label", "class"}]}``.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ss_stylegan.storage.atomic import atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)

CLASSES = ("normal", "lesion")
SLICE_THICKNESS_MM = 5.0

AIR_HU, FAT_HU, SOFT_HU, LUNG_HU, VESSEL_HU, NODULE_HU, BONE_HU = -1000, -100, 40, -800, 30, 60, 700
NOISE_HU = 18.0


def synthetic_affine(size: int, n_slices: int) -> np.ndarray:
    """RAS affine with in-plane spacing ``0.7 * 512 / size`` mm and 5 mm slices, centred on the origin."""
    spacing = np.array([0.7 * 512 / size, 0.7 * 512 / size, SLICE_THICKNESS_MM])
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -spacing * (np.array([size, size, n_slices]) - 1) / 2.0
    return affine


def random_lesion_slices(n_slices: int, fraction: float, rng: np.random.Generator) -> list[int]:
    """Runs of 3-8 consecutive slices (like a nodule seen on neighbouring slices) covering ~``fraction``."""
    target = int(round(fraction * n_slices))
    lesion: set[int] = set()
    attempts = 0
    while len(lesion) < target and attempts < 50:
        attempts += 1
        length = int(rng.integers(3, 9))
        start = int(rng.integers(0, max(1, n_slices - length + 1)))
        lesion.update(range(start, min(n_slices, start + length)))
    return sorted(lesion)


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, au: float, av: float) -> np.ndarray:
    return ((u - cu) / au) ** 2 + ((v - cv) / av) ** 2 <= 1.0


def synthetic_volume(
    n_slices: int, size: int, lesion_slices: Sequence[int], rng: np.random.Generator
) -> np.ndarray:
    """One CT-like volume in HU, ``int16 [size, size, n_slices]``; ``lesion_slices`` get a nodule."""
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    u, v = np.meshgrid(coords, coords, indexing="ij")  # u along x (R), v along y (A)
    body_au, body_av = 0.85 * rng.uniform(0.92, 1.05), 0.6 * rng.uniform(0.9, 1.08)
    lung_shift = rng.uniform(-0.03, 0.03)
    lesion_set = set(int(k) for k in lesion_slices)
    # one nodule per run of consecutive lesion slices: a sphere seen on neighbouring slices
    nodules: dict[int, tuple[float, float, float]] = {}
    runs = _runs(sorted(lesion_set))
    for run in runs:
        # centre well inside the lung on every slice of the run, so the nodule is always visible
        scale = min(_lung_scale((k + 0.5) / n_slices) for k in run)
        side = rng.choice([-1.0, 1.0])
        cu = side * (0.38 + lung_shift) + rng.uniform(-0.5, 0.5) * 0.26 * scale
        cv = 0.05 + rng.uniform(-0.5, 0.5) * 0.36 * scale
        radius = rng.uniform(0.09, 0.14)
        centre, half = (run[0] + run[-1]) / 2.0, (run[-1] - run[0]) / 2.0 + 1.0
        for k in run:
            nodules[k] = (cu, cv, radius * max(0.75, np.sqrt(1.0 - ((k - centre) / half) ** 2)))

    volume = np.empty((size, size, n_slices), dtype=np.float32)
    for k in range(n_slices):
        lung_scale = _lung_scale((k + 0.5) / n_slices)
        img = np.full((size, size), AIR_HU, dtype=np.float32)
        img[_ellipse(u, v, 0, 0, body_au, body_av)] = FAT_HU
        img[_ellipse(u, v, 0, 0, body_au - 0.07, body_av - 0.07)] = SOFT_HU
        lungs = np.zeros((size, size), dtype=bool)
        for side in (-1.0, 1.0):
            lungs |= _ellipse(u, v, side * (0.38 + lung_shift), 0.05, 0.26 * lung_scale, 0.36 * lung_scale)
        img[lungs] = LUNG_HU
        for _ in range(int(rng.integers(3, 8))):  # vessels: small dots inside the lungs
            inside = np.argwhere(lungs)
            if len(inside):
                i, j = inside[rng.integers(len(inside))]
                img[_ellipse(u, v, coords[i], coords[j], 0.035, 0.035) & lungs] = VESSEL_HU
        img[_ellipse(u, v, 0, -0.42, 0.1, 0.1)] = BONE_HU
        if k in nodules:
            cu, cv, r = nodules[k]
            img[_ellipse(u, v, cu, cv, r, r) & lungs] = NODULE_HU
        volume[:, :, k] = img
    volume += rng.normal(0.0, NOISE_HU, size=volume.shape).astype(np.float32)
    return np.clip(np.rint(volume), -1024, 3071).astype(np.int16)


def _lung_scale(t: float) -> float:
    """Lung size at relative height ``t`` in (0, 1): small at apex and base, largest mid-chest."""
    return 0.55 + 0.45 * float(np.sin(np.pi * (0.1 + 0.8 * t)))


def _runs(indices: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for k in indices:
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def make_synthetic_study(
    path: str | Path,
    n_slices: int = 24,
    size: int = 64,
    lesion_slices: Sequence[int] | None = None,
    random_state: int | np.random.Generator | None = 0,
    lesion_fraction: float = 0.35,
) -> dict[str, Any]:
    """Write one synthetic CT study (``.nii.gz``) and its JSON sidecar.

    Args:
        path: output ``.nii.gz`` (or ``.nii``) path; the sidecar is ``<image_id>.json`` beside it.
        n_slices: number of axial slices.
        size: in-plane side in pixels.
        lesion_slices: slice indices holding a nodule; ``None`` picks runs covering ``lesion_fraction``.
        random_state: seed or generator.
        lesion_fraction: share of lesion slices when ``lesion_slices`` is ``None``.

    Returns:
        The sidecar dict (also written to disk).

    Raises:
        ValueError: sizes out of range or lesion slices outside the volume.
    """
    if n_slices < 1 or size < 8:
        raise ValueError(f"need n_slices >= 1 and size >= 8, got n_slices={n_slices}, size={size}")
    rng = np.random.default_rng(random_state)
    path = Path(path)
    if lesion_slices is None:
        lesion_slices = random_lesion_slices(n_slices, lesion_fraction, rng)
    bad = [k for k in lesion_slices if not 0 <= int(k) < n_slices]
    if bad:
        raise ValueError(f"lesion slices {bad} are outside 0..{n_slices - 1}")
    data = synthetic_volume(n_slices, size, lesion_slices, rng)
    img = nib.Nifti1Image(data, synthetic_affine(size, n_slices))
    img.header.set_xyzt_units("mm")
    raw = img.to_bytes()
    lower = path.name.lower()
    atomic_write_bytes(path, gzip.compress(raw, compresslevel=1, mtime=0) if lower.endswith(".gz") else raw)

    image_id = path.name[: -len(".nii.gz")] if lower.endswith(".nii.gz") else path.stem
    lesion = set(int(k) for k in lesion_slices)
    labels = [1 if k in lesion else 0 for k in range(n_slices)]
    sidecar = {
        "dataset": "synthetic",
        "resolution": size,
        "volume": image_id,
        "layout": "array (X, Y, Z) in HU, RAS affine; slice k = data[:, :, k]",
        "classes": list(CLASSES),
        "n_slices": n_slices,
        "class_counts": {CLASSES[0]: labels.count(0), CLASSES[1]: labels.count(1)},
        "slices": [{"slice": k, "label": lab, "class": CLASSES[lab]} for k, lab in enumerate(labels)],
    }
    atomic_write_text(path.parent / f"{image_id}.json", json.dumps(sidecar, indent=1))
    return sidecar


def make_synthetic_datastore(
    folder: str | Path,
    n_studies: int = 4,
    n_slices: int = 24,
    size: int = 64,
    random_state: int = 0,
    lesion_fraction: float = 0.35,
    prefix: str = "study",
) -> list[Path]:
    """Write ``n_studies`` synthetic studies ``<prefix>_00.nii.gz ...`` (plus sidecars) into ``folder``.

    Each study draws from its own child seed of ``random_state``, so the datastore is reproducible.

    Returns:
        The volume paths, sorted.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seeds = np.random.SeedSequence(random_state).spawn(n_studies)
    paths = []
    for i, seed in enumerate(seeds):
        path = folder / f"{prefix}_{i:02d}.nii.gz"
        make_synthetic_study(path, n_slices=n_slices, size=size, random_state=np.random.default_rng(seed),
                             lesion_fraction=lesion_fraction)
        paths.append(path)
    logger.info("wrote %d synthetic studies (%d slices, %dx%d) to %s", n_studies, n_slices, size, size, folder)
    return paths


def read_sidecar_labels(volume_path: str | Path) -> np.ndarray:
    """Per-slice labels (``int64 [n_slices]``) from the JSON sidecar beside a volume."""
    volume_path = Path(volume_path)
    name = volume_path.name
    image_id = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else volume_path.stem
    sidecar = json.loads((volume_path.parent / f"{image_id}.json").read_text(encoding="utf-8"))
    return np.asarray([s["label"] for s in sorted(sidecar["slices"], key=lambda s: s["slice"])], dtype=np.int64)
