"""Image grids the training writes beside its checkpoints (``samples.png``, ``reconstructions.png``)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

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


@torch.no_grad()
def save_grids(model: Any, grid_z: torch.Tensor, real: torch.Tensor, out: Path) -> None:
    """``samples.png`` (the EMA generator on fixed latents) and ``reconstructions.png`` (real slices above
    their reconstructions) in ``out``."""
    g = model.generator_ema
    samples = g.synthesis(g.mapping(grid_z), noise_mode="const")
    _write_png(out / "samples.png", _grid(samples, cols=4))
    recon = model.reconstruct(real)
    _write_png(out / "reconstructions.png", _grid(torch.cat([real, recon]), cols=real.shape[0]))
