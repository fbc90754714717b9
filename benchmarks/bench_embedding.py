"""Memory and speed of embedding a large slice cache into a memory-mapped W file (``embed_to_file``).

For each size a synthetic slice cache (uint8 ``[N, R, R]`` ``.npy``, as ``SliceCache`` writes it) is embedded
by a fresh process with the ``tiny`` network (randomly initialised: memory does not depend on the weights,
and speed is that of the tiny network, not of a real preset). The process samples its own memory every
0.1 s: ``RssAnon`` (private memory: what must stay flat) and ``VmRSS`` (plus file pages mapped in).

Usage::

    .venv/bin/python benchmarks/bench_embedding.py --slices 100000 1000000

Prints figures; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, threading, time
import numpy as np, torch
from ss_stylegan.config import ModelConfig
from ss_stylegan.model.embedding import embed_to_file
from ss_stylegan.model.networks import SSStyleGAN

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

peak = {"RssAnon": 0.0, "VmRSS": 0.0}
done = threading.Event()
def sample():
    while not done.is_set():
        for k in peak:
            peak[k] = max(peak[k], status(k))
        time.sleep(0.1)

slices, out, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
torch.manual_seed(0)
images = np.load(slices, mmap_mode="r")
model = SSStyleGAN(ModelConfig.tiny(images.shape[1])).eval()
before = {k: status(k) for k in peak}
threading.Thread(target=sample, daemon=True).start()
t0 = time.perf_counter()
last = [0.0]
def progress(n, total):
    if time.perf_counter() - last[0] > 30:
        last[0] = time.perf_counter()
        print(f"  {n:,}/{total:,} embedded", file=sys.stderr, flush=True)
w = embed_to_file(model, images, out, batch_size=batch, progress=progress)
seconds = time.perf_counter() - t0
done.set()
for k in peak:
    peak[k] = max(peak[k], status(k))
print(json.dumps({"seconds": seconds, "shape": list(w.shape), "before_mb": before, "peak_mb": peak,
                  "vm_hwm_mb": status("VmHWM")}))
"""


def synthetic_cache(path: Path, n: int, resolution: int) -> None:
    """A ``.npy`` of ``n`` uint8 slices: 1,000 distinct random-disc slices repeated (written in chunks)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:resolution, :resolution]
    block = np.zeros((1000, resolution, resolution), np.uint8)
    for i in range(len(block)):
        cy, cx = rng.uniform(0.3, 0.7, 2) * resolution
        r = rng.uniform(0.1, 0.3) * resolution
        block[i] = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r * r, rng.integers(100, 255), 0)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, resolution, resolution))
    for start in range(0, n, len(block)):
        out[start : start + len(block)] = block[: n - start]
    out.flush()
    del out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--tmp", type=Path, default=None, help="folder for the cache files (default: system temp)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="bench_embedding_") as tmp:
        for n in args.slices:
            slices, out = Path(tmp) / f"slices_{n}.npy", Path(tmp) / f"w_{n}.npy"
            t0 = time.perf_counter()
            synthetic_cache(slices, n, args.resolution)
            size_gb = slices.stat().st_size / 1e9
            print(f"N={n:>9,}: slice cache {size_gb:.2f} GB written in {time.perf_counter() - t0:.0f} s", flush=True)
            run = subprocess.run([sys.executable, "-c", CHILD, str(slices), str(out), str(args.batch_size)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(run.stdout.strip().splitlines()[-1])
            w_mb = out.stat().st_size / 2**20
            print(f"N={n:>9,}: embedded in {r['seconds']:.0f} s ({n / r['seconds']:,.0f} slices/s, tiny network, "
                  f"1 thread); W file {w_mb:,.0f} MiB; private memory (RssAnon) {r['before_mb']['RssAnon']:.0f} MiB "
                  f"before, peak {r['peak_mb']['RssAnon']:.0f} MiB; resident (VmRSS) peak {r['peak_mb']['VmRSS']:.0f} "
                  f"MiB", flush=True)
            slices.unlink()
            out.unlink()


if __name__ == "__main__":
    main()
