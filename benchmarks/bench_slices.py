#!/usr/bin/env python
"""Slice-cache speed: first build, unchanged rebuild, one study added, and a single uploaded study.

    python benchmarks/bench_slices.py [--studies 20 --slices 48 --size 256 --resolution 64 --repeats 3]

Prints medians in seconds and the rebuild/first-build ratio (an incremental rebuild should cost a
small fraction of the first one, since unchanged studies are not re-read).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ss_stylegan.config import SliceConfig
from ss_stylegan.data.cache import SliceCache, find_studies, read_study_slices
from ss_stylegan.data.synthetic import make_synthetic_datastore


def _time(fn) -> float:  # noqa: ANN001 - a zero-argument callable
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = SliceConfig(resolution=args.resolution)
    root = Path(tempfile.mkdtemp(prefix="bench_slices_"))
    try:
        folder = root / "studies"
        make_synthetic_datastore(folder, args.studies, args.slices, args.size, random_state=0)
        make_synthetic_datastore(root / "extra", 1, args.slices, args.size, random_state=1, prefix="added")
        first, rebuild, add_one, single = [], [], [], []
        for r in range(args.repeats):
            cache_dir = root / f"cache{r}"
            first.append(_time(lambda: SliceCache.build(find_studies(folder), cfg, cache_dir)))
            rebuild.append(_time(lambda: SliceCache.build(find_studies(folder), cfg, cache_dir)))
            shutil.copy(root / "extra" / "added_00.nii.gz", folder / "added_00.nii.gz")
            add_one.append(_time(lambda: SliceCache.build(find_studies(folder), cfg, cache_dir)))
            (folder / "added_00.nii.gz").unlink()
            single.append(_time(lambda: read_study_slices(folder / "study_00.nii.gz", cfg)))
        n = args.studies * args.slices
        med = {name: statistics.median(v) for name, v in
               [("first build", first), ("unchanged rebuild", rebuild), ("one study added", add_one),
                ("read_study_slices (1 study)", single)]}
        print(f"{args.studies} studies x {args.slices} slices of {args.size}^2 -> {args.resolution}^2, "
              f"{args.threads} thread(s), median of {args.repeats}")
        for name, value in med.items():
            print(f"  {name:28s} {value:8.3f} s")
        print(f"  first build per slice        {1000 * med['first build'] / n:8.3f} ms")
        print(f"  rebuild / first build        {med['unchanged rebuild'] / med['first build']:8.3f}")
        print(f"  add-one / first build        {med['one study added'] / med['first build']:8.3f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
