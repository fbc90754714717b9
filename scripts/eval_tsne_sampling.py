"""How the slice map changes when t-SNE is fitted on a sample and the other slices are placed with ``transform``.

Three measurements on real lung CT (IQ-OTH/NCCD, see ``docs/evaluation/tsne_sampling.md``):

A. The 1097 real slices (raw-pixel PCA, 50 components): the map fitted on a fraction of the slices, for
   several fractions and repeats. Label efficiency as in the paper's protocol (farthest point sampling of
   k slices in the map, 1-NN for the rest; accuracy on slices of unseen scans and on every unlabelled slice).
B. A larger set made from the same slices: every slice plus ``--copies`` randomly shifted, rotated,
   contrast-scaled and noisy copies (each copy keeps its slice's label and scan group), PCA-50. The full
   t-SNE fit against fits on samples of ``--samples`` points: 10-NN preservation (how many of a point's 10
   nearest neighbours in the embedding are among its 10 nearest in the map), agreement of the 10-NN with
   the full map, label efficiency, and time.
C. The same larger set, t-SNE fitted once on a sample of each of ``--c-samples`` points, the other points
   placed with ``transform`` at each of ``--transform-iters`` optimisation iterations (0: openTSNE's
   initial placement only, the median of the 25 nearest reference points): the same figures, with the
   fit and the placement timed apart; label efficiency is the mean over 5 FPS starts (A: one per repeat,
   B: one). Placement costs about as much per point as fitting, so its
   iterations, not the sample size alone, decide how long a large map takes.

Usage::

    python scripts/eval_tsne_sampling.py --data ../shared/data/iqothnccd/iqothnccd_64.npz \\
        --out docs/evaluation/tsne_sampling.json --copies 45 --samples 2500 5000 10000 20000 \\
        --c-samples 10000 20000 --transform-iters 250 100 50 0

``--parts`` runs some of A, B, C only. Prints a markdown report and writes every figure as JSON. Tens of
minutes of CPU on 2 cores (the full fit of part B and the placements dominate).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from ss_stylegan.storage.atomic import atomic_write_text
from ss_stylegan.evaluation.datasets import load_dataset
from ss_stylegan.evaluation.protocol import score_selection
from ss_stylegan.maps.projection import TSNEProjector
from ss_stylegan.selection.fps import FarthestPointSelector

log = logging.getLogger("eval_tsne_sampling")
KS = (10, 20, 50)
K_NN = 10


def pca50(images: np.ndarray, seed: int = 0) -> np.ndarray:
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return PCA(n_components=50, random_state=seed).fit_transform(x).astype(np.float32)


def augmented(images: np.ndarray, copies: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Every slice plus ``copies`` perturbed copies: uint8 ``[N * (copies + 1), R, R]`` and the source row of each."""
    rng = np.random.default_rng(seed)
    out, source = [images], [np.arange(len(images))]
    for _ in range(copies):
        batch = np.empty_like(images)
        for i, img in enumerate(images):
            x = ndimage.rotate(img.astype(np.float32), rng.uniform(-8, 8), reshape=False, order=1, mode="nearest")
            x = ndimage.shift(x, rng.uniform(-3, 3, 2), order=1, mode="nearest")
            x = (x - x.mean()) * rng.uniform(0.85, 1.15) + x.mean() + rng.normal(0, 4, x.shape)
            batch[i] = np.clip(x, 0, 255).astype(np.uint8)
        out.append(batch)
        source.append(np.arange(len(images)))
    return np.concatenate(out), np.concatenate(source)


def knn(points: np.ndarray, queries: np.ndarray, k: int = K_NN) -> np.ndarray:
    """Indices ``[Q, k]`` of the k nearest other points of each query row (exact)."""
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points[queries])
    return idx[:, 1:]


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean fraction of shared neighbours between two ``[Q, k]`` neighbour lists."""
    return float(np.mean([len(set(x) & set(y)) / a.shape[1] for x, y in zip(a, b)]))


def label_efficiency(points: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int) -> dict[str, Any]:
    order = np.array([p.index for p in FarthestPointSelector(start="random", random_state=seed).select(points, count=max(KS))])
    out: dict[str, Any] = {}
    for k in KS:
        report = score_selection(points, labels, groups, order[:k], int(labels.max()) + 1)
        out[f"k{k}"] = {scope: round(float(r["accuracy"]), 4) for scope, r in report.items()}
    return out


def mean_accuracy(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean of several :func:`label_efficiency` results (same keys)."""
    return {k: {scope: round(float(np.mean([r[k][scope] for r in runs])), 4) for scope in runs[0][k]} for k in runs[0]}


def timed_map(W: np.ndarray, sample: int | None, seed: int) -> tuple[np.ndarray, float, float]:
    """Map positions of every row, wall seconds and CPU seconds (this process and its threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    xy = TSNEProjector(random_state=seed, n_jobs=2, max_fit_points=sample).fit_transform(W)
    return xy, time.perf_counter() - wall, time.process_time() - cpu


def part_a(data: Any, fractions: list[float], repeats: int) -> list[dict[str, Any]]:
    W = pca50(data.images)
    queries = np.arange(len(W))
    truth = knn(W, queries)
    rows = []
    for fraction in fractions:
        sample = None if fraction >= 1 else max(50, int(round(fraction * len(W))))
        for repeat in range(repeats):
            xy, wall, cpu = timed_map(W, sample, repeat)
            rows.append({"fraction": fraction, "fit_points": sample or len(W), "repeat": repeat,
                         "knn_preservation": round(overlap(truth, knn(xy, queries)), 4),
                         "accuracy": label_efficiency(xy, data.labels, data.groups, repeat),
                         "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)})
            log.info("A: %s", rows[-1])
    return rows


def part_b(data: Any, copies: int, samples: list[int]) -> dict[str, Any]:
    images, source = augmented(data.images, copies)
    W = pca50(images)
    labels, groups = data.labels[source], data.groups[source]
    queries = np.random.default_rng(0).choice(len(W), 2000, replace=False)
    truth = knn(W, queries)
    rows, full_nn = [], None
    for sample in [None, *sorted(samples)]:
        xy, wall, cpu = timed_map(W, sample, 0)
        nn = knn(xy, queries)
        full_nn = nn if sample is None else full_nn
        rows.append({"fit_points": sample or len(W), "knn_preservation": round(overlap(truth, nn), 4),
                     "agreement_with_full_map": round(overlap(full_nn, nn), 4),
                     "accuracy": label_efficiency(xy, labels, groups, 0), "wall_s": round(wall, 1),
                     "cpu_s": round(cpu, 1)})
        log.info("B: %s", rows[-1])
    return {"n_points": len(W), "copies": copies, "rows": rows}


def part_c(data: Any, copies: int, samples: list[int], iters: list[int]) -> dict[str, Any]:
    images, source = augmented(data.images, copies)
    W = pca50(images)
    labels, groups = data.labels[source], data.groups[source]
    queries = np.random.default_rng(0).choice(len(W), 2000, replace=False)
    truth = knn(W, queries)
    rows = []
    for sample in sorted(samples):
        wall, cpu = time.perf_counter(), time.process_time()
        proj = TSNEProjector(random_state=0, n_jobs=2, max_fit_points=sample).fit(W)
        fit_wall, fit_cpu = time.perf_counter() - wall, time.process_time() - cpu
        rest = np.setdiff1d(np.arange(len(W)), proj.sample_indices_, assume_unique=True)
        for n_iter in iters:
            proj.transform_n_iter = n_iter
            wall, cpu = time.perf_counter(), time.process_time()
            xy = np.empty((len(W), 2))
            xy[proj.sample_indices_] = proj.embedding_
            xy[rest] = proj.transform(W, rows=rest)
            place_wall, place_cpu = time.perf_counter() - wall, time.process_time() - cpu
            nn = knn(xy, queries)
            rows.append({"fit_points": sample, "transform_n_iter": n_iter, "placed": int(len(rest)),
                         "knn_preservation": round(overlap(truth, nn), 4),
                         "accuracy": mean_accuracy([label_efficiency(xy, labels, groups, seed) for seed in range(5)]),
                         "fit_wall_s": round(fit_wall, 1), "fit_cpu_s": round(fit_cpu, 1),
                         "place_wall_s": round(place_wall, 1), "place_cpu_s": round(place_cpu, 1),
                         "place_ms_per_point": round(1e3 * place_wall / max(1, len(rest)), 2)})
            log.info("C: %s", rows[-1])
    return {"n_points": len(W), "copies": copies, "rows": rows}


def report(result: dict[str, Any]) -> str:
    lines: list[str] = []
    if "a" in result:
        lines += report_a(result["a"])
    if "b" in result:
        lines += report_b(result["b"])
    if "c" in result:
        lines += report_c(result["c"])
    return "\n".join(lines)


def report_c(c: dict[str, Any]) -> list[str]:
    lines = ["", f"## C. {c['n_points']:,} points: fit on a sample, place the rest with n iterations", "",
             "| fit points | placement iterations | 10-NN preservation | FPS k=10 / 20 / 50, unseen scans | "
             "all unlabelled | fit wall s (CPU s) | placement wall s (CPU s) | ms per placed point |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in c["rows"]:
        acc = r["accuracy"]
        lines.append(f"| {r['fit_points']:,} | {r['transform_n_iter']} | {r['knn_preservation']:.3f} | "
                     + " / ".join(f"{acc[f'k{k}']['unseen_groups']:.3f}" for k in KS) + " | "
                     + " / ".join(f"{acc[f'k{k}']['all_unlabelled']:.3f}" for k in KS)
                     + f" | {r['fit_wall_s']:.0f} ({r['fit_cpu_s']:.0f}) | {r['place_wall_s']:.0f} "
                     f"({r['place_cpu_s']:.0f}) | {r['place_ms_per_point']:.2f} |")
    return lines


def report_a(a: list[dict[str, Any]]) -> list[str]:
    lines = ["## A. 1097 real slices (pixel PCA-50), fitted on a fraction, mean over repeats", "",
             "| fit points | 10-NN preservation | FPS k=10 / 20 / 50, unseen scans | all unlabelled | wall s |",
             "| --- | --- | --- | --- | --- |"]
    for fraction in sorted({r["fraction"] for r in a}):
        rows = [r for r in a if r["fraction"] == fraction]

        def mean(scope: str, k: int, rows: list[dict[str, Any]] = rows) -> str:
            v = [r["accuracy"][f"k{k}"][scope] for r in rows]
            return f"{np.mean(v):.3f}±{np.std(v):.3f}"

        knn_mean, wall_mean = np.mean([r["knn_preservation"] for r in rows]), np.mean([r["wall_s"] for r in rows])
        lines.append(f"| {rows[0]['fit_points']} ({fraction:.0%}) | {knn_mean:.3f} | "
                     + " / ".join(mean("unseen_groups", k) for k in KS) + " | "
                     + " / ".join(mean("all_unlabelled", k) for k in KS) + f" | {wall_mean:.1f} |")
    return lines


def report_b(b: dict[str, Any]) -> list[str]:
    lines = ["", f"## B. {b['n_points']:,} points (each real slice + {b['copies']} perturbed copies, PCA-50)", "",
             "| fit points | 10-NN preservation | 10-NN agreement with the full map | "
             "FPS k=10 / 20 / 50, unseen scans | all unlabelled | wall s | CPU s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in b["rows"]:
        acc = r["accuracy"]
        lines.append(f"| {r['fit_points']:,} | {r['knn_preservation']:.3f} | {r['agreement_with_full_map']:.3f} | "
                     + " / ".join(f"{acc[f'k{k}']['unseen_groups']:.3f}" for k in KS) + " | "
                     + " / ".join(f"{acc[f'k{k}']['all_unlabelled']:.3f}" for k in KS)
                     + f" | {r['wall_s']:.0f} | {r['cpu_s']:.0f} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, help="IQ-OTH/NCCD npz (images, labels, groups)")
    p.add_argument("--out", required=True, type=Path, help="JSON file for every figure")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.5, 1.0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--copies", type=int, default=45)
    p.add_argument("--samples", type=int, nargs="+", default=[2500, 5000, 10000, 20000])
    p.add_argument("--c-samples", type=int, nargs="+", default=[10000, 20000])
    p.add_argument("--transform-iters", type=int, nargs="+", default=[250, 100, 50, 0])
    p.add_argument("--parts", nargs="+", choices=["a", "b", "c"], default=["a", "b", "c"])
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    data = load_dataset(args.data)
    result: dict[str, Any] = {}
    if "a" in args.parts:
        result["a"] = part_a(data, args.fractions, args.repeats)
    if "b" in args.parts:
        result["b"] = part_b(data, args.copies, args.samples)
    if "c" in args.parts:
        result["c"] = part_c(data, args.copies, args.c_samples, args.transform_iters)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    atomic_write_text(args.out, json.dumps(result, indent=1))
    print(report(result))


if __name__ == "__main__":
    main()
