"""Turn a canonical volume into model-ready ``uint8`` slices: window, pad to square, resize, skip empties.

Windowing maps an intensity range ``[low, high]`` to ``0..255`` (0 = window low = background).
Named windows are the usual radiology ones, in Hounsfield units, as ``(center, width)``.
``"auto"`` uses :data:`AUTO_CT_WINDOW` when the volume looks like HU, the full ``0..255`` range
for 8-bit grey data (pictures, already windowed exports: they keep their contrast) and robust
percentiles of the volume otherwise (MR, unscaled scanner values).
"""

from __future__ import annotations

import dataclasses
import io
import logging

import numpy as np
import torch
import torch.nn.functional as F

from ss_stylegan.config import SLICE_WINDOWS, ConfigError, SliceConfig
from ss_stylegan.data.readers import Volume

logger = logging.getLogger(__name__)

CT_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "abdomen": (40.0, 400.0),
    "soft_tissue": (40.0, 350.0),
    "mediastinum": (50.0, 350.0),
    "brain": (40.0, 80.0),
    "bone": (400.0, 1800.0),
}
"""Named CT windows, ``name -> (center, width)`` in HU."""

AUTO_CT_WINDOW: tuple[float, float] = (-200.0, 1600.0)
"""``"auto"`` window for HU data, ``(center, width)``: -1000..600 HU keeps air, lung parenchyma,
soft tissue and contrast distinct, so one model serves chest and abdomen studies."""

FOREGROUND_LEVEL = 10
"""A pixel above this ``uint8`` level (about 4 % of the window) counts as foreground."""

WINDOW_NAMES = SLICE_WINDOWS
assert set(WINDOW_NAMES) == {"auto", "custom", "percentile", *CT_WINDOWS}

_RESIZE_CHUNK = 64  # slices resized per interpolate call, bounds temporary memory


@dataclasses.dataclass
class PreprocessedSlices:
    """The kept slices of one volume.

    Attributes:
        images: ``uint8 [n, R, R]``.
        slices: ``int64 [n]``, index of each kept slice in the canonical volume.
        positions: ``float64 [n, 3]``, world RAS (mm) centre of each kept slice.
        n_slices: number of slices in the volume, kept or not.
        window: the ``(low, high)`` intensity range mapped to ``0..255``.
    """

    images: np.ndarray
    slices: np.ndarray
    positions: np.ndarray
    n_slices: int
    window: tuple[float, float]


def window_range(data: np.ndarray, is_hu: bool, cfg: SliceConfig, is_8bit: bool = False) -> tuple[float, float]:
    """The intensity range ``(low, high)`` that ``cfg.window`` selects for a volume.

    Args:
        data: the volume (any shape), finite values.
        is_hu: whether ``data`` is in Hounsfield units (decides ``"auto"``).
        cfg: slice settings.
        is_8bit: whether ``data`` was stored as 8-bit grey (``"auto"`` then keeps ``0..255``).

    Raises:
        ConfigError: unknown window name, or ``"custom"`` without centre/width.
    """
    name = cfg.window
    if name == "custom":
        if cfg.window_center is None or not cfg.window_width or cfg.window_width <= 0:
            raise ConfigError("window 'custom' needs window_center and a positive window_width")
        center, width = float(cfg.window_center), float(cfg.window_width)
    elif name in CT_WINDOWS:
        center, width = CT_WINDOWS[name]
    elif name == "auto" and is_hu:
        center, width = AUTO_CT_WINDOW
    elif name == "auto" and is_8bit:
        return 0.0, 255.0
    elif name in ("auto", "percentile"):
        return percentile_range(data, cfg.percentiles)
    else:
        raise ConfigError(f"unknown window {name!r}; valid windows are {list(WINDOW_NAMES)}")
    return center - width / 2.0, center + width / 2.0


def percentile_range(data: np.ndarray, percentiles: tuple[float, float], max_samples: int = 2_000_000) -> tuple[float, float]:
    """Robust ``(low, high)`` percentiles of ``data``; a regular subsample bounds the cost on big volumes."""
    flat = data.reshape(-1)
    if flat.size > max_samples:
        flat = flat[:: int(np.ceil(flat.size / max_samples))]
    lo, hi = np.percentile(flat, percentiles)
    lo, hi = float(lo), float(hi)
    if hi <= lo:  # a (nearly) constant volume
        hi = lo + 1.0
    return lo, hi


def apply_window(data: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``[low, high]`` linearly to ``0..255`` (clipped, rounded), returning ``uint8`` of the same shape."""
    if not high > low:
        raise ValueError(f"window high ({high}) must be above low ({low})")
    scaled = (np.asarray(data, dtype=np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def resize_square(slices: np.ndarray, resolution: int, pad_value: float = 0.0) -> np.ndarray:
    """Pad slices to a square (centred, with ``pad_value``) and resize with antialiasing.

    Args:
        slices: ``[n, H, W]`` numeric (windowed, 0..255 scale).
        resolution: output side ``R``.
        pad_value: fill of the padding (the background, window low = 0).

    Returns:
        ``uint8 [n, R, R]``.
    """
    n, h, w = slices.shape
    side = max(h, w)
    out = np.empty((n, resolution, resolution), dtype=np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    for start in range(0, n, _RESIZE_CHUNK):
        chunk = torch.from_numpy(np.asarray(slices[start:start + _RESIZE_CHUNK], dtype=np.float32))
        if side != h or side != w:
            chunk = F.pad(chunk, (left, side - w - left, top, side - h - top), value=float(pad_value))
        if side != resolution:
            chunk = F.interpolate(chunk[:, None], size=(resolution, resolution), mode="bilinear",
                                  align_corners=False, antialias=side > resolution)[:, 0]
        out[start:start + len(chunk)] = chunk.round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def keep_mask(images: np.ndarray, min_foreground: float) -> np.ndarray:
    """Which ``uint8 [n, R, R]`` slices carry content: not constant, and enough foreground pixels.

    Returns:
        ``bool [n]``.
    """
    flat = images.reshape(len(images), -1)
    constant = flat.min(axis=1) == flat.max(axis=1)
    foreground = (flat > FOREGROUND_LEVEL).mean(axis=1)
    return ~constant & (foreground >= min_foreground)


def preprocess_volume(volume: Volume, cfg: SliceConfig) -> PreprocessedSlices:
    """Window, resize and filter every axial slice of a canonical volume.

    Args:
        volume: a volume from :func:`ss_stylegan.data.readers.read_volume`.
        cfg: slice settings (resolution, window, ``min_foreground``, ``max_slices_per_study``).

    Returns:
        The kept slices, in inferior -> superior order.
    """
    low, high = window_range(volume.data, volume.is_hu, cfg, is_8bit=volume.is_8bit)
    images = _model_ready(volume, slice(None), (low, high), cfg)
    kept = np.flatnonzero(keep_mask(images, cfg.min_foreground))
    if cfg.max_slices_per_study is not None and len(kept) > cfg.max_slices_per_study:
        pick = np.unique(np.linspace(0, len(kept) - 1, cfg.max_slices_per_study).round().astype(np.int64))
        kept = kept[pick]
    if len(kept) < volume.n_slices:
        logger.debug("%s: kept %d of %d slices", volume.path, len(kept), volume.n_slices)
    return PreprocessedSlices(
        images=np.ascontiguousarray(images[kept]),
        slices=kept.astype(np.int64),
        positions=volume.slice_positions()[kept],
        n_slices=volume.n_slices,
        window=(low, high),
    )


def model_ready_slice(volume: Volume, slice_index: int, cfg: SliceConfig) -> np.ndarray:
    """One axial slice exactly as :func:`preprocess_volume` gives it to the model, kept or not.

    The window is the whole volume's (as in :func:`preprocess_volume`), so the image equals the cached
    slice the map was made from. Rows run along the canonical first axis (towards R), columns towards A.

    Args:
        volume: a canonical volume from :func:`ss_stylegan.data.readers.read_volume`.
        slice_index: canonical axial index, ``0 <= slice_index < volume.n_slices`` (0 = most inferior).
        cfg: slice settings (resolution, window).

    Returns:
        ``uint8 [R, R]``.

    Raises:
        IndexError: the index is outside the volume (the message gives the valid range).
    """
    n = volume.n_slices
    if not 0 <= slice_index < n:
        raise IndexError(f"slice {slice_index} is out of range: {volume.path.name} has slices 0..{n - 1}")
    window = window_range(volume.data, volume.is_hu, cfg, is_8bit=volume.is_8bit)
    return _model_ready(volume, slice(slice_index, slice_index + 1), window, cfg)[0]


def _model_ready(volume: Volume, which: slice, window: tuple[float, float], cfg: SliceConfig) -> np.ndarray:
    """Window and resize the axial slices ``which`` of a volume: ``uint8 [n, R, R]``."""
    # [X, Y, Z] -> [Z, X, Y]: slice k is data[:, :, k] with its own first axis as rows.
    slices = np.moveaxis(volume.data[:, :, which], 2, 0)
    return resize_square(apply_window(slices, *window), cfg.resolution, pad_value=0.0)


def encode_png(image: np.ndarray) -> bytes:
    """A ``uint8 [H, W]`` grey image as PNG bytes (row 0 at the top)."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"expected a uint8 [H, W] image, got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
