"""What the networks take: model-ready ``uint8`` slices turned into the networks' input tensors.

Training and embedding both feed slices through here, so neither imports the other.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ss_stylegan.model.networks.layers import ShapeError


def to_model_input(images_u8: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 slices ``[B, R, R]`` -> float32 ``[B, 1, R, R]`` in [-1, 1] on ``device``."""
    x = torch.from_numpy(np.array(images_u8, dtype=np.uint8, copy=True)).to(device=device, dtype=torch.float32)
    return (x / 127.5 - 1.0)[:, None]


def check_slices(images_u8: Any, resolution: int) -> None:
    """Raise :class:`~ss_stylegan.model.networks.ShapeError` unless ``images_u8`` is a uint8 array ``[N, R, R]`` with
    N >= 1 and R the model's resolution."""
    if not isinstance(images_u8, np.ndarray):
        raise ShapeError(f"images must be a numpy array (or memmap) of uint8 slices, got {type(images_u8)}")
    if images_u8.dtype != np.uint8 or images_u8.ndim != 3 or images_u8.shape[1:] != (resolution, resolution):
        raise ShapeError(
            f"images must be uint8 [N, {resolution}, {resolution}] (the model resolution), got "
            f"{images_u8.dtype} {list(images_u8.shape)}; rebuild the slice cache at resolution {resolution}"
        )
    if images_u8.shape[0] < 1:
        raise ShapeError("no slices: the studies folder yielded no usable slice")
