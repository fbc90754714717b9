"""Benchmark selection, 1-NN classification and the t-SNE map on this machine; prints medians.

Run: ``.venv/bin/python benchmarks/bench_selection.py [--quick]``. Single-threaded numpy where
possible (``OMP_NUM_THREADS=1`` is set before numpy is imported) so figures are comparable on a
shared machine. Nothing here is asserted; it only prints.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

from ss_stylegan.classification import NearestNeighbourClassifier  # noqa: E402
from ss_stylegan.projection import TSNEProjector  # noqa: E402
from ss_stylegan.selection import FarthestPointSelector, FarthestPointState  # noqa: E402

TSNE_100K_BUDGET_S = 240.0


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_fps(n: int, repeats: int, rng: np.random.Generator) -> None:
    X = rng.normal(size=(n, 2)) * 30
    labelled = rng.choice(n, 50, replace=False)
    selector = FarthestPointSelector(random_state=0)
    seeded = median_time(lambda: selector.select(X, labelled=labelled, count=1), repeats)
    empty = median_time(lambda: selector.select(X, count=1), repeats)
    state = FarthestPointState(X, labelled)

    def next_pick() -> None:
        state.add(state.farthest())

    incremental = median_time(next_pick, repeats * 5)
    print(f"FPS  N={n:>9,}: first pick with 50 labelled {seeded * 1e3:8.2f} ms | first pick, nothing labelled "
          f"{empty * 1e3:8.2f} ms | each further pick (incremental) {incremental * 1e3:8.2f} ms")


def bench_knn(n: int, repeats: int, rng: np.random.Generator) -> None:
    X = rng.normal(size=(n, 2)) * 30
    lab = rng.choice(n, 50, replace=False)
    clf = NearestNeighbourClassifier().fit(X[lab], rng.integers(0, 2, 50))
    t = median_time(lambda: clf.predict(X), repeats)
    print(f"1-NN N={n:>9,}: classify every point against 50 labels (2 classes) {t * 1e3:9.1f} ms "
          f"({t / n * 1e9:.0f} ns/point)")


def bench_tsne(n: int, dim: int, rng: np.random.Generator) -> float:
    X = (rng.normal(size=(n, dim)) + rng.integers(0, 8, size=(n, 1))).astype(np.float32)
    t = time.perf_counter()
    TSNEProjector(random_state=0, n_jobs=1).fit(X)
    dt = time.perf_counter() - t
    print(f"t-SNE fit N={n:>7,} (D={dim}, 750 iterations, 1 thread): {dt:7.1f} s")
    return dt


def bench_load(n: int, dim: int, rng: np.random.Generator) -> None:
    W = rng.normal(size=(n, dim)).astype(np.float32)
    small = TSNEProjector(n_iter=50, early_exaggeration_iter=50, random_state=0).fit(W[:500])
    # A 100k-point map saved in the real format: the fitted small map's parameters with a large
    # reference set (fitting t-SNE on 100k points is measured separately).
    small.reference_ = W
    small._build(rng.normal(size=(n, 2)) * 40)
    with tempfile.TemporaryDirectory() as folder:
        small.save(folder)
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) / 2**20
        t_load = median_time(lambda: TSNEProjector.load(folder), 3)
        loaded = TSNEProjector.load(folder)
        t_first = median_time(lambda: loaded.transform(W[:10] + 0.01), 1)
        t_tr = median_time(lambda: loaded.transform(W[10:20] + 0.01), 3)
    print(f"projector load N={n:,} D={dim} ({size:.0f} MiB on disk): {t_load * 1e3:.0f} ms; then transform "
          f"of 10 new points: first {t_first * 1e3:.0f} ms (builds the FFT grid), later {t_tr * 1e3:.0f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="skip 1M points and the t-SNE fits above 1k")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    for n in sizes:
        bench_fps(n, 5, rng)
    for n in sizes:
        bench_knn(n, 3, rng)
    t1k = bench_tsne(1_000, 64, rng)
    if not args.quick:
        t10k = bench_tsne(10_000, 64, rng)
        # openTSNE's cost grows about linearly (FFT gradients + approximate neighbours).
        estimate = t10k * 10 * 1.2
        if estimate < TSNE_100K_BUDGET_S:
            bench_tsne(100_000, 64, rng)
        else:
            print(f"t-SNE fit N=100,000 skipped: estimated {estimate:.0f} s from the 10k fit "
                  f"(> {TSNE_100K_BUDGET_S:.0f} s budget on this shared 2-core machine)")
    elif math.isfinite(t1k):
        print("t-SNE fits above 1k skipped (--quick)")
    bench_load(100_000, 512, rng)


if __name__ == "__main__":
    main()
