"""One SS-StyleGAN training step on this machine: where the time goes, and what each throughput option buys.

Measures, side by side in one run, the images/s of full training steps (G step with reconstruction, D step
with encoder NLL, EMA; R1 excluded as in bench_training.py) for each variant below, in interleaved rounds
(A B C ... A B C ...) so that a noisy machine affects every variant alike, and prints each variant's median
and its ratio to today's step (float32, contiguous tensors, torch's default thread count):

- ``fp32``            today's step
- ``channels_last``   NHWC memory layout for the convolutions
- ``bf16``            bfloat16 autocast of the forward passes (AMX / AVX512-BF16 on recent Xeons)
- ``bf16+cl``         both
- ``threads=1``       today's step on one thread (the rate per core when two trainings share a machine)
- ``compile``         ``torch.compile`` of the generator's synthesis and mapping networks (``--compile``;
                      the discriminator is left eager because R1 needs a double backward)

``--profile`` adds a torch.profiler table of one step's most expensive operators.

    .venv/bin/python benchmarks/bench_step.py                         # small network, 64x64, batch 16
    .venv/bin/python benchmarks/bench_step.py --preset small --resolution 32 --rounds 5 --profile
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ss_stylegan.config import TrainConfig
from ss_stylegan.training.recipes import model_preset
from ss_stylegan.training.loop import Trainer

VARIANTS = ("fp32", "channels_last", "bf16", "bf16+cl", "threads=1")


def make_trainer(images: np.ndarray, preset: str, batch: int, variant: str, tmp: Path) -> Trainer:
    cfg = TrainConfig(batch_size=batch, resume=False, precision="bf16" if "bf16" in variant else "fp32",
                      channels_last=variant in ("channels_last", "bf16+cl"))
    torch.manual_seed(0)
    trainer = Trainer(images, model_preset(preset, images.shape[1]), cfg, tmp / variant.replace("=", ""),
                      torch.device("cpu"))
    if variant == "compile":
        g = trainer.model.generator
        g.synthesis = torch.compile(g.synthesis)
        g.mapping = torch.compile(g.mapping)
    return trainer


def timed_step(trainer: Trainer, threads: int) -> float:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        trainer.step = 1        # never a lazy-R1 step
        start = time.perf_counter()
        trainer.train_step()
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(before)


def profile_step(trainer: Trainer, rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train_step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small", help="network preset: default, small or tiny")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds; each times --steps steps per variant")
    p.add_argument("--steps", type=int, default=2, help="timed steps per variant and round")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the generator")
    p.add_argument("--profile", action="store_true", help="print the top operators of one fp32 step")
    args = p.parse_args()
    threads = torch.get_num_threads()
    variants = list(VARIANTS) + (["compile"] if args.compile else [])
    rng = np.random.default_rng(0)
    images = (rng.random((256, args.resolution, args.resolution)) * 255).astype(np.uint8)
    print(f"preset {args.preset} at {args.resolution}x{args.resolution}, batch {args.batch}; torch {torch.__version__}, "
          f"{threads} threads, bf16 fast path (oneDNN AMX/AVX512-BF16): {torch.backends.mkldnn.is_available()}")
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for v in variants:   # build and warm up every variant first (allocations, oneDNN kernels, compilation)
            t0 = time.perf_counter()
            trainers[v] = make_trainer(images, args.preset, args.batch, v, Path(tmp))
            timed_step(trainers[v], 1 if v == "threads=1" else threads)
            print(f"  {v:14s} warm-up step {time.perf_counter() - t0:6.1f} s", flush=True)
        times: dict[str, list[float]] = {v: [] for v in variants}
        for r in range(args.rounds):
            for v in variants:
                for _ in range(args.steps):
                    times[v].append(timed_step(trainers[v], 1 if v == "threads=1" else threads))
            print(f"  round {r + 1}/{args.rounds} done", flush=True)
        base = statistics.median(times["fp32"])
        print(f"\n{'variant':14s} {'median s/step':>14s} {'images/s':>9s} {'vs fp32':>8s}")
        for v in variants:
            med = statistics.median(times[v])
            print(f"{v:14s} {med:14.3f} {args.batch / med:9.2f} {base / med:7.2f}x")
        if args.profile:
            print("\none fp32 step, operators by self CPU time:\n" + profile_step(trainers["fp32"]))


if __name__ == "__main__":
    main()
