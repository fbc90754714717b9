"""Benchmark selection, 1-NN classification and the t-SNE map on this machine; prints medians.

Run: ``.venv/bin/python benchmarks/bench_selection.py [--quick] [--parts ...] [--max-fit N] [--map-sizes N ...]
[--map-1m SLICES]``. Single-threaded numpy where possible (``OMP_NUM_THREADS=1`` is set before numpy is
imported) so figures are comparable on a shared machine; the map is built with openTSNE on 2 threads
(``n_jobs=2``), as a 2-core server would.

The map of 100k slices is what a server builds after training (``TSNEProjector.fit_transform``: t-SNE
fitted on a sample of ``MAX_FIT_POINTS``, the others placed with ``transform``), on W vectors of the CPU
recipe's size (128). For 1M slices the sample is fitted the same way and ``--map-1m`` of the other slices
are placed; placement costs the same for every slice (each is placed on its own), so the time for all of
them is extrapolated linearly, and printed as such. The map times exclude the embedding (slices -> W), which
``bench_embedding.py`` and ``bench_training.py`` measure. Nothing here is asserted; it only prints.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

from ss_stylegan.classification.nearest import NearestNeighbourClassifier
from ss_stylegan.maps.projection import MAX_FIT_POINTS, TSNEProjector
from ss_stylegan.selection.fps import FarthestPointSelector, FarthestPointState

MAP_DIM = 128   # w_dim of the CPU recipe's network
PARTS = ("fps", "knn", "tsne", "map", "load")


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
    selector = FarthestPointSelector(start="random", random_state=0)
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


def clustered_w(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """W-like vectors: 40 Gaussian clusters of different spreads, float32 ``[n, dim]``."""
    centres = rng.normal(size=(40, dim)) * 3.0
    which = rng.integers(0, 40, n)
    return (centres[which] + rng.normal(size=(n, dim)) * rng.uniform(0.5, 1.5, 40)[which, None]).astype(np.float32)


def bench_tsne(n: int, dim: int, rng: np.random.Generator) -> float:
    """A map fitted on every point (n at most MAX_FIT_POINTS)."""
    X = clustered_w(n, dim, rng)
    t = time.perf_counter()
    TSNEProjector(random_state=0, n_jobs=2).fit(X)
    dt = time.perf_counter() - t
    print(f"t-SNE fit N={n:>7,} (D={dim}, 750 iterations, 2 threads): {dt:7.1f} s")
    return dt


def bench_map(n: int, dim: int, rng: np.random.Generator, max_fit: int, place: int | None = None) -> None:
    """The server's map of ``n`` slices: fit on a sample, place the rest (``place`` of them, then extrapolate)."""
    W = clustered_w(n, dim, rng)
    proj = TSNEProjector(random_state=0, n_jobs=2, max_fit_points=max_fit)
    fitted = min(n, max_fit)
    wall, cpu = time.perf_counter(), time.process_time()
    if place is None:
        done = [0.0, 0.0]

        def progress(placed: int, total: int) -> None:
            if not done[0]:
                done[0], done[1] = time.perf_counter() - wall, time.process_time() - cpu   # fit + first batch

        proj.fit_transform(W, progress=progress)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"map of N={n:>9,} (D={dim}, t-SNE fitted on {fitted:,}, the other {n - fitted:,} placed; 2 threads; "
              f"embedding excluded): {wall:6.1f} s wall, {cpu:6.1f} s CPU"
              + (f" (fit and the first batch placed after {done[0]:.1f} s)" if done[0] else ""), flush=True)
        return
    proj.fit(W)
    fit_wall, fit_cpu = time.perf_counter() - wall, time.process_time() - cpu
    rest = np.setdiff1d(np.arange(n), proj.sample_indices_)
    part = rest[:place]
    wall, cpu = time.perf_counter(), time.process_time()
    proj.transform(W, rows=part)
    per_wall, per_cpu = (time.perf_counter() - wall) / len(part), (time.process_time() - cpu) / len(part)
    print(f"map of N={n:>9,} (D={dim}, 2 threads): t-SNE fit on {fitted:,} {fit_wall:6.1f} s wall / "
          f"{fit_cpu:6.1f} s CPU; {len(part):,} slices placed in {per_wall * len(part):6.1f} s "
          f"({per_wall * 1e3:.2f} ms each); all {len(rest):,} extrapolated: {fit_wall + per_wall * len(rest):7.0f} s "
          f"wall, {fit_cpu + per_cpu * len(rest):7.0f} s CPU", flush=True)


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
    p.add_argument("--quick", action="store_true", help="skip 1M points, the 100k map and the 10k fit")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="run only these parts")
    p.add_argument("--max-fit", type=int, default=MAX_FIT_POINTS,
                   help=f"t-SNE sample size of the maps (default: the library's, {MAX_FIT_POINTS:,})")
    p.add_argument("--map-sizes", type=int, nargs="+", default=[100_000], help="maps made in full (map part)")
    p.add_argument("--map-1m", type=int, default=0, metavar="SLICES",
                   help="also measure the 1M-slice map, placing this many slices and extrapolating")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    if "fps" in args.parts:
        for n in sizes:
            bench_fps(n, 5, rng)
    if "knn" in args.parts:
        for n in sizes:
            bench_knn(n, 3, rng)
    if "tsne" in args.parts:
        bench_tsne(1_000, MAP_DIM, rng)
        if not args.quick:
            bench_tsne(10_000, MAP_DIM, rng)
    if "map" in args.parts:
        if not args.quick:
            for n in args.map_sizes:
                bench_map(n, MAP_DIM, rng, args.max_fit)
        if args.map_1m:
            bench_map(1_000_000, MAP_DIM, rng, args.max_fit, place=args.map_1m)
    if "load" in args.parts:
        bench_load(100_000, 512, rng)


if __name__ == "__main__":
    main()
