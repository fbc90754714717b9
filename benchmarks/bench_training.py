"""Training and embedding throughput of SS-StyleGAN with the default (GPU-sized) model configurations.

Prints, per device and resolution, the median images/s of full training steps (G step with
reconstruction, D step with encoder NLL, EMA; the lazy R1 step, 1 in 16, is not timed) and the
median slices/s of :func:`ss_stylegan.model.embedding.embed_images`. CUDA is measured when available.

    .venv/bin/python benchmarks/bench_training.py                 # CPU (and CUDA if present)
    .venv/bin/python benchmarks/bench_training.py --resolutions 64 --cpu-steps 3

The CPU defaults are kept small (batch 2, three timed steps) so the script ends in well under three
minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ss_stylegan.config import ModelConfig, TrainConfig
from ss_stylegan.model.embedding import embed_images
from ss_stylegan.training.loop import Trainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(device: torch.device, resolution: int, batch_size: int, steps: int, embed_n: int,
          repeats: int, preset: str = "default") -> tuple[float, float, float]:
    """Returns (train images/s, embed slices/s, parameters in millions)."""
    rng = np.random.default_rng(0)
    images = (rng.random((max(batch_size * 4, embed_n), resolution, resolution)) * 255).astype(np.uint8)
    cfg = ModelConfig(resolution=resolution) if preset == "default" else getattr(ModelConfig, preset)(resolution)
    with tempfile.TemporaryDirectory() as tmp, torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        torch.manual_seed(0)
        trainer = Trainer(images, cfg, TrainConfig(batch_size=batch_size, resume=False), Path(tmp), device)
        trainer.step = 1                        # start off the lazy-R1 grid: R1 runs 1 step in 16 and is
        trainer.train_step()                    # not timed; this warm-up pays allocations and cuDNN autotune
        times = []
        for _ in range(steps):
            _sync(device)
            start = time.perf_counter()
            trainer.train_step()
            _sync(device)
            times.append(time.perf_counter() - start)
        model = trainer.model.eval()
        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        embed_images(model, images[: min(embed_n, 8)], batch_size=8, device=device)
        rates = []
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            embed_images(model, images[:embed_n], batch_size=min(embed_n, 256), device=device)
            _sync(device)
            rates.append(embed_n / (time.perf_counter() - start))
    return batch_size / statistics.median(times), statistics.median(rates), n_params


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    p.add_argument("--cpu-batch", type=int, default=2, help="images per training step on the CPU")
    p.add_argument("--cpu-steps", type=int, default=3, help="timed training steps on the CPU")
    p.add_argument("--cpu-embed", type=int, default=16, help="slices embedded per repeat on the CPU")
    p.add_argument("--cuda-batch", type=int, default=32)
    p.add_argument("--cuda-steps", type=int, default=10)
    p.add_argument("--cuda-embed", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3, help="embedding repeats (median reported)")
    p.add_argument("--preset", default="default", choices=["default", "small", "tiny"],
                   help="model size: default (GPU), small (CPU servers), tiny (tests)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"preset {args.preset}; torch {torch.__version__}, CPU threads {torch.get_num_threads()}, "
          f"CUDA {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'not available'}")
    print(f"{'device':6} {'res':>4} {'params':>8} {'batch':>5} {'train img/s':>12} {'embed slices/s':>15}")
    for device in devices:
        cpu = device.type == "cpu"
        for res in args.resolutions:
            train_rate, embed_rate, n_params = bench(
                device, res,
                batch_size=args.cpu_batch if cpu else args.cuda_batch,
                steps=args.cpu_steps if cpu else args.cuda_steps,
                embed_n=args.cpu_embed if cpu else args.cuda_embed,
                repeats=args.repeats,
                preset=args.preset,
            )
            batch = args.cpu_batch if cpu else args.cuda_batch
            print(f"{device.type:6} {res:>4} {n_params:>7.1f}M {batch:>5} {train_rate:>12.2f} {embed_rate:>15.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
