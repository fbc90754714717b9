"""Slices -> mu(x) in W (the SS-StyleGAN embedding), plus two diagnostics of how good it is.

The embedding of a slice is the encoder mean mu(x) (Cohen Hochberg et al. found W far better than Z
for classification). Embeddings are stored with the ``model_version`` of the checkpoint that made them.

Large datastores: :func:`embed_to_file` streams the embeddings batch by batch into a ``.npy`` file and
returns it memory-mapped, reading a memory-mapped slice cache with plain file reads (so neither the
slices nor the embeddings are ever held whole in memory, and the process's resident memory stays flat).
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from ss_stylegan.model.networks import SSStyleGAN
from ss_stylegan.model.networks.inputs import check_slices, to_model_input
from ss_stylegan.storage.atomic import atomic_write


def _batches(n: int, batch_size: int) -> range:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return range(0, n, batch_size)


@torch.no_grad()
def embed_images(model: SSStyleGAN, images_u8: np.ndarray, batch_size: int = 256,
                 device: str | torch.device = "cpu") -> np.ndarray:
    """Encode slices into W.

    Args:
        model: a trained model (e.g. from :func:`ss_stylegan.model.checkpoint.load_model`); moved to ``device``.
        images_u8: uint8 slices ``[N, R, R]`` at the model resolution; a memmap is read batch by batch.
        batch_size: slices per forward pass.
        device: where to run the encoder.

    Returns:
        float32 ``[N, w_dim]``: mu(x) of every slice, in input order.
    """
    check_slices(images_u8, model.cfg.resolution)
    out = np.empty((images_u8.shape[0], model.cfg.w_dim), dtype=np.float32)
    for start, mu in _encode(model, images_u8, batch_size, device):
        out[start : start + len(mu)] = mu
    return out


def embed_to_file(
    model: SSStyleGAN,
    images_u8: np.ndarray,
    path: str | Path,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Encode slices into W, written batch by batch to the ``.npy`` file ``path`` (atomically).

    Args:
        model, images_u8, batch_size, device: as for :func:`embed_images`.
        path: the ``.npy`` file to write (replaced only once it is complete).
        progress: called with ``(slices embedded, total)`` after every batch.

    Returns:
        The embeddings, float32 ``[N, w_dim]``, memory-mapped read-only from ``path``.
    """
    check_slices(images_u8, model.cfg.resolution)
    n, w_dim = images_u8.shape[0], model.cfg.w_dim
    path = Path(path)

    def write(fh: object) -> None:
        np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                  "fortran_order": False, "shape": (n, w_dim)})
        for start, mu in _encode(model, images_u8, batch_size, device):
            fh.write(np.ascontiguousarray(mu, dtype=np.float32).tobytes())
            if progress is not None:
                progress(start + len(mu), n)

    atomic_write(path, write)
    if n == 0:   # a zero-byte array cannot be memory-mapped
        return np.zeros((0, w_dim), dtype=np.float32)
    return np.load(path, mmap_mode="r")


@torch.no_grad()
def _encode(model: SSStyleGAN, images_u8: np.ndarray, batch_size: int,
            device: str | torch.device) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, mu float32 [b, w_dim])`` for consecutive batches of ``images_u8``."""
    model = model.to(device).eval()
    for start, batch in read_batches(images_u8, batch_size):
        mu, _ = model.encode(to_model_input(batch, device))
        yield start, mu.float().cpu().numpy()


def read_batches(images: np.ndarray, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, rows [b, ...])`` of ``images`` in order. A memory map backed by a file is read with plain
    file reads into one reused buffer, so its pages are not mapped into this process (resident memory stays
    one batch, whatever the file size); any other array is sliced."""
    n = images.shape[0]
    starts = _batches(n, batch_size)
    # only a memory map as np.memmap / np.load made it (its base is the mapping itself) has a valid .offset;
    # a slice of one keeps its parent's offset, so it is read through the mapping instead
    whole_file = isinstance(images, np.memmap) and isinstance(images.base, mmap.mmap) and images.flags.c_contiguous
    if not whole_file or n == 0:
        for start in starts:
            yield start, np.asarray(images[start : start + batch_size])
        return
    filename = images.filename
    buffer = np.empty((min(batch_size, n), *images.shape[1:]), dtype=images.dtype)
    with open(filename, "rb") as fh:
        fh.seek(int(images.offset))
        for start in starts:
            part = buffer[: min(batch_size, n - start)]
            if fh.readinto(memoryview(part).cast("B")) != part.size * images.dtype.itemsize:
                raise OSError(f"{filename} ended early at row {start}; the slice cache is damaged, rebuild it")
            yield start, part


@torch.no_grad()
def reconstruction_error(model: SSStyleGAN, images_u8: np.ndarray, batch_size: int = 256,
                         device: str | torch.device = "cpu", use_ema: bool = True) -> float:
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
