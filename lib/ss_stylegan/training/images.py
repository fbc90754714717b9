"""Image grids the training writes beside its checkpoints (``samples.png``, ``reconstructions.png``)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from ss_stylegan.storage.atomic import atomic_write_bytes

GRID_SAMPLES = 16
def _grid(images: torch.Tensor, cols: int) -> np.ndarray:
    """``[N, 1, R, R]`` in [-1, 1] -> uint8 mosaic ``[rows * R, cols * R]``."""
    x = ((images[:, 0].float().cpu() + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    n, r, _ = x.shape
    rows = -(-n // cols)
    canvas = np.zeros((rows * r, cols * r), dtype=np.uint8)
    for i in range(n):
        canvas[(i // cols) * r:(i // cols + 1) * r, (i % cols) * r:(i % cols + 1) * r] = x[i]
    return canvas


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
