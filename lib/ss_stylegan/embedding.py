"""Slices -> mu(x) in W (the SS-StyleGAN embedding), plus two diagnostics of how good it is.

The embedding of a slice is the encoder mean mu(x) (Cohen Hochberg et al. found W far better than Z
for classification). Embeddings are stored with the ``model_version`` of the checkpoint that made them.
"""

from __future__ import annotations

import numpy as np
import torch

from ss_stylegan.networks import SSStyleGAN
from ss_stylegan.training import check_slices, to_model_input


def _batches(n: int, batch_size: int) -> range:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return range(0, n, batch_size)


@torch.no_grad()
def embed_images(
    model: SSStyleGAN,
    images_u8: np.ndarray,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Encode slices into W.

    Args:
        model: a trained model (e.g. from :func:`ss_stylegan.checkpoint.load_model`); moved to ``device``.
        images_u8: uint8 slices ``[N, R, R]`` at the model resolution; a memmap is read batch by batch.
        batch_size: slices per forward pass.
        device: where to run the encoder.

    Returns:
        float32 ``[N, w_dim]``: mu(x) of every slice, in input order.
    """
    check_slices(images_u8, model.cfg.resolution)
    model = model.to(device).eval()
    out = np.empty((images_u8.shape[0], model.cfg.w_dim), dtype=np.float32)
    for i in _batches(images_u8.shape[0], batch_size):
        mu, _ = model.encode(to_model_input(images_u8[i : i + batch_size], device))
        out[i : i + mu.shape[0]] = mu.float().cpu().numpy()
    return out


@torch.no_grad()
def reconstruction_error(
    model: SSStyleGAN,
    images_u8: np.ndarray,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    use_ema: bool = True,
) -> float:
    """Mean squared error (in [-1, 1] units) between real slices and G(mu(x)) (paper Eq. 1 without beta)."""
    check_slices(images_u8, model.cfg.resolution)
    model = model.to(device)
    total = 0.0
    for i in _batches(images_u8.shape[0], batch_size):
        x = to_model_input(images_u8[i : i + batch_size], device)
        total += (model.reconstruct(x, use_ema=use_ema) - x).square().mean(dim=[1, 2, 3]).sum().item()
    return total / images_u8.shape[0]


@torch.no_grad()
def w_recovery_error(
    model: SSStyleGAN,
    num_samples: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
    use_ema: bool = True,
) -> float:
    """How well the encoder inverts the generator: ``mean |mu(G(w)) - w|^2 / mean |w - mean(w)|^2``.

    1 means no better than predicting the mean w; 0 is perfect recovery. Uses fixed z from ``seed``.
    """
    g = model.generator_ema if use_ema else model.generator
    model = model.to(device)
    z = torch.randn(num_samples, model.cfg.z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    ws = g.mapping(z)
    mu, _ = model.encode(g.synthesis(ws, noise_mode="const"))
    w = ws[:, 0]
    return ((mu - w).square().mean() / (w - w.mean(dim=0)).square().mean().clamp_min(1e-12)).item()
