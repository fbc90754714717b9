"""Pictures the training writes beside its checkpoints, large enough to read and titled.

- ``samples.png``: what the generator (its moving average) draws from 16 fixed latents;
- ``reconstructions.png``: real slices in the top row, the generator's reconstruction of each from its W below.

Each slice is enlarged (nearest neighbour) to at least :data:`MIN_TILE` pixels, with a white title band
naming the picture, the training step and each row. A new map version carries the pictures of its checkpoint.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ss_stylegan.storage.atomic import atomic_write_bytes

GRID_SAMPLES = 16
MIN_TILE = 128        # pixels per slice in the pictures
TITLE_PX = 28         # height of the title band
LABEL_PX = 110        # width of the row-title column
GAP = 4


def _tiles(images: torch.Tensor) -> np.ndarray:
    """``[N, 1, R, R]`` in [-1, 1] -> uint8 ``[N, T, T]`` enlarged to at least :data:`MIN_TILE` pixels."""
    x = ((images[:, 0].float().cpu() + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    scale = max(1, -(-MIN_TILE // x.shape[1]))
    return x.repeat(scale, axis=1).repeat(scale, axis=2)


def titled_grid(rows: list[tuple[str, np.ndarray]], title: str) -> Image.Image:
    """Rows of equal-size uint8 tiles, each row titled on its left, under a title band."""
    font = ImageFont.load_default()
    tile = rows[0][1].shape[1]
    cols = max(len(r[1]) for r in rows)
    width = LABEL_PX + cols * (tile + GAP)
    height = TITLE_PX + len(rows) * (tile + GAP)
    canvas = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(canvas)
    draw.text((GAP, GAP), title, fill=0, font=font)
    for i, (name, tiles) in enumerate(rows):
        top = TITLE_PX + i * (tile + GAP)
        draw.text((GAP, top + tile // 2 - 6), name, fill=0, font=font)
        for j, image in enumerate(tiles):
            canvas.paste(Image.fromarray(image), (LABEL_PX + j * (tile + GAP), top))
    return canvas


def _write_png(path: Path, image: Image.Image) -> None:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


@torch.no_grad()
def save_grids(model: Any, grid_z: torch.Tensor, real: torch.Tensor, out: Path, step: int | None = None) -> None:
    """``samples.png`` (the EMA generator on fixed latents, in rows of 8) and ``reconstructions.png`` (real
    slices above their reconstructions) in ``out``."""
    at = f" at step {step}" if step is not None else ""
    g = model.generator_ema
    samples = _tiles(g.synthesis(g.mapping(grid_z), noise_mode="const"))
    rows = [(f"samples {i + 1}-{min(i + 8, len(samples))}", samples[i:i + 8]) for i in range(0, len(samples), 8)]
    _write_png(out / "samples.png", titled_grid(rows, f"Generator samples (moving average){at}"))
    recon = _tiles(model.reconstruct(real))
    _write_png(out / "reconstructions.png", titled_grid(
        [("real slice", _tiles(real)), ("reconstructed", recon)],
        f"Real slices and their reconstructions from W{at}: the closer, the more W holds of each slice"))
