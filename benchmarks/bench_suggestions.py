"""Latency of the server-side indexes kept between requests, with 16 concurrent annotators; prints percentiles.

The library objects are timed directly in threads (no HTTP), as a server holds them:

- ``fps``: :class:`~ss_stylegan.selection.incremental.SuggestionIndex`. 20 slices are labelled; each of 16 client
  threads asks for one suggestion at a time, and every request replaces that client's earlier reservation
  (the server's rule), so each request releases one centre and adds one. A lock shared with the
  reservation table covers select + reserve, as in the server: a :class:`~ss_stylegan.labelling.fair_lock.FairLock`
  (first come, first served), and for comparison Python's ``threading.Lock``. Latency includes the wait
  for that lock; "in lock" is the time a request holds it (the service time a queue of 16 multiplies).
- ``classify``: :class:`~ss_stylegan.classification.nearest.NearestLabelIndex` over ``--labelled`` labelled
  points (default: every point of the map), 300 query slices per request (one study), 16 threads.
- the one-off costs: building each index for the map.

Usage::

    .venv/bin/python benchmarks/bench_suggestions.py --slices 10000 100000 1000000

Speed is measured here, never asserted in tests. The server benchmark (``bench_server.py``) adds HTTP and
the app's own work on top of these figures.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from ss_stylegan.classification.nearest import NearestLabelIndex
from ss_stylegan.labelling.fair_lock import FairLock
from ss_stylegan.selection.incremental import SuggestionIndex

CLIENTS = 16
STUDY_SLICES = 300


def synthetic_map(n: int, rng: np.random.Generator) -> np.ndarray:
    """A t-SNE-like 2-D map: 20 Gaussian blobs of different sizes, ``[n, 2]`` float32 (as the server stores it)."""
    centres = rng.normal(scale=30.0, size=(20, 2))
    scale = rng.uniform(0.5, 3.0, size=20)
    which = rng.integers(0, 20, n)
    return (centres[which] + rng.normal(size=(n, 2)) * scale[which, None]).astype(np.float32)


def percentiles(ms: list[float]) -> str:
    ms = sorted(ms)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return f"median {statistics.median(ms):7.2f} ms   p95 {p95:7.2f} ms   max {ms[-1]:7.2f} ms   (n={len(ms)})"


def run_clients(work, n_rounds: int) -> list[float]:
    """``work(client)`` from CLIENTS threads, ``n_rounds`` calls each, all started together; latencies in ms."""
    latencies: list[float] = []
    start = threading.Barrier(CLIENTS)

    def client(c: int) -> None:
        start.wait()
        for _ in range(n_rounds):
            t0 = time.perf_counter()
            work(c)
            latencies.append((time.perf_counter() - t0) * 1000.0)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def bench_fps(xy: np.ndarray, rng: np.random.Generator, n_rounds: int) -> None:
    n = len(xy)
    t0 = time.perf_counter()
    index = SuggestionIndex(xy, start="central", random_state=0)
    built = time.perf_counter() - t0
    labelled = rng.choice(n, 20, replace=False)
    t0 = time.perf_counter()
    index.select(labelled=labelled, count=1)
    first = time.perf_counter() - t0
    reserved: dict[int, list[int]] = {c: [] for c in range(CLIENTS)}
    held: list[float] = []

    def make_suggest(lock: FairLock | threading.Lock):
        def suggest(c: int) -> None:
            with lock:
                t0 = time.perf_counter()
                others = [r for k, rows in reserved.items() if k != c for r in rows]
                reserved[c] = [p.index for p in index.select(labelled=labelled, pending=others, count=1)]
                held.append((time.perf_counter() - t0) * 1000.0)
        return suggest

    suggest = make_suggest(FairLock())
    run_clients(suggest, 2)   # every client holds a reservation: the steady state of a busy server
    one = []
    for c in range(CLIENTS * n_rounds // 4):
        t0 = time.perf_counter()
        suggest(c % CLIENTS)
        one.append((time.perf_counter() - t0) * 1000.0)
    print(f"fps      N={n:>9,}: index built in {built * 1e3:6.0f} ms, first select (20 labels) {first * 1e3:6.0f} ms")
    print(f"fps      N={n:>9,}:  1 client               {percentiles(one)}")
    held.clear()
    print(f"fps      N={n:>9,}: {CLIENTS} clients, FairLock    {percentiles(run_clients(suggest, n_rounds))}")
    print(f"fps      N={n:>9,}:   in lock              {percentiles(held)}")
    print(f"fps      N={n:>9,}: {CLIENTS} clients, Lock        "
          f"{percentiles(run_clients(make_suggest(threading.Lock()), n_rounds))}")


def bench_classify(xy: np.ndarray, rng: np.random.Generator, n_labelled: int, n_rounds: int) -> None:
    n = len(xy)
    rows = rng.choice(n, min(n_labelled, n), replace=False)
    classes = np.where(xy[rows, 0] > 0, "lesion", "normal")
    t0 = time.perf_counter()
    index = NearestLabelIndex(xy)
    index.set_labels(rows, classes)
    index.predict(xy[:1])                     # the first query builds the k-d trees
    built = time.perf_counter() - t0
    starts = rng.integers(0, n - STUDY_SLICES, 64)
    lock = threading.Lock()

    def classify(c: int) -> None:
        s = int(starts[c % len(starts)])
        index.predict(xy[s : s + STUDY_SLICES])

    def relabel(k: int) -> None:
        with lock:
            row = int(rng.integers(0, n))
            index.set_labels([row], ["lesion" if k % 2 else "normal"])

    print(f"classify N={n:>9,}: {len(rows):,} labelled, index built in {built * 1e3:6.0f} ms")
    print(f"classify N={n:>9,}: {CLIENTS} clients, {STUDY_SLICES} slices each  "
          f"{percentiles(run_clients(classify, n_rounds))}")

    def classify_while_labelling(c: int) -> None:
        if c == 0:
            relabel(int(time.perf_counter() * 1e6))
        classify(c)

    print(f"classify N={n:>9,}: {CLIENTS} clients, one of them labelling a slice before each request  "
          f"{percentiles(run_clients(classify_while_labelling, n_rounds))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=12, help="requests per client")
    parser.add_argument("--labelled", type=int, default=None, help="labelled points for classify (default: all)")
    args = parser.parse_args()
    for n in args.slices:
        rng = np.random.default_rng(0)
        xy = synthetic_map(n, rng)
        bench_fps(xy, rng, args.rounds)
        bench_classify(xy, rng, args.labelled or n, args.rounds)


if __name__ == "__main__":
    main()
