"""Where W loses to pixels, and what mixing them costs: the follow-up of issue 19's grid.

The grid (``python -m ss_stylegan.evaluate``) found W + TypiClust + 1-NN in the map ahead of pixel PCA's best
pipeline on unseen scans at every k, and behind it at k = 50 on all slices. This script scores, with the grid's
seeds (t-SNE ``random_state`` = repeat, TypiClust ``random_state`` = repeat, pixel PCA refitted per repeat), the
ways of letting the pixels in that the grid does not hold:

- choose in W, classify by 1-NN in the pixel map, in the W and pixel maps side by side (a 4-D nearest
  neighbour), or by both maps' 1-NN votes;
- choose and map in W next to pixel PCA, each standardised (``combined``, as the grid) or each block weighted to the
  same total variance (``balanced``);
- 3 nearest neighbours in W's map; W's 1-NN averaged with logistic regression on W;

and the server's TypiClust (one pick at a time) against the evaluation's (a batch), with all 128 dimensions or with
exact cluster counts, to say where their gap comes from. Every row is paired, repeat by repeat, with pixel PCA's
best pipeline (TypiClust in pixel PCA + 1-NN in the pixel map).

Usage (W of one or more trainings, as ``embeddings_repeat0.npz`` of the grid's runs)::

    .venv/bin/python scripts/eval_pixel_mixes.py --data ../shared/data/iqothnccd/iqothnccd_64.npz \\
        --w runs/seed0/grid20/embeddings_repeat0.npz runs/seed1/... --repeats 20 --out mixes.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lib"))
from ss_stylegan.classification.features import classify_features  # noqa: E402
from ss_stylegan.evaluation.protocol import map_predictions, score_predictions  # noqa: E402
from ss_stylegan.maps.projection import TSNEProjector  # noqa: E402
from ss_stylegan.selection import online  # noqa: E402
from ss_stylegan.selection.feature_space import FeatureSpace  # noqa: E402
from ss_stylegan.selection.features import prepare_features  # noqa: E402
from ss_stylegan.selection.typiclust import TypiClustSelector  # noqa: E402

KS = (10, 20, 50)
CELLS = [(k, scope) for scope in ("all_unlabelled", "unseen_groups") for k in KS]
BASELINE = "pixel PCA: typiclust + 1-NN in its map (its best)"


def typiclust(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    return np.asarray(TypiClustSelector(random_state=seed).select(x, k), dtype=np.int64)


def server_picks(x: np.ndarray, count: int, seed: int, ladder: tuple[int, ...], one_at_a_time: bool = True,
                 **space: int) -> list[int]:
    """The server's TypiClust index over ``x`` with the cluster counts ``ladder``: one pick at a time (each counted
    before the next, as annotators get them) or ``count`` at once."""
    saved, online.LADDER = online.LADDER, ladder
    try:
        index = online.TypiClustIndex(FeatureSpace(x, random_state=seed, **space), random_state=seed)
    finally:
        online.LADDER = saved
    if not one_at_a_time:
        return [p.index for p in index.select([], count)]
    picks: list[int] = []
    for _ in range(count):
        picks += [p.index for p in index.select(picks, 1)]
    return picks


def knn_scores(points: np.ndarray, labels: np.ndarray, labelled: np.ndarray, n_classes: int, k: int) -> np.ndarray:
    """Distance-weighted votes of the ``k`` nearest labelled points."""
    dist, idx = NearestNeighbors(n_neighbors=min(k, len(labelled))).fit(points[labelled]).kneighbors(points)
    votes = np.zeros((len(points), n_classes))
    rows = np.arange(len(points))
    for j in range(idx.shape[1]):
        np.add.at(votes, (rows, labels[labelled][idx[:, j]]), 1.0 / (dist[:, j] + 1e-6))
    return votes / votes.sum(axis=1, keepdims=True)


def run(images: np.ndarray, labels: np.ndarray, groups: np.ndarray, w_files: list[Path], repeats: int
        ) -> dict[tuple[str, int, str], list[float]]:
    n_classes = int(labels.max()) + 1
    out: dict[tuple[str, int, str], list[float]] = {}

    def nn(points: np.ndarray, labelled: np.ndarray) -> np.ndarray:
        return map_predictions(points, labels, labelled, n_classes)[1]

    def record(name: str, k: int, labelled: np.ndarray, scores: np.ndarray) -> None:
        scored = score_predictions(scores.argmax(axis=1), scores, labels, groups, labelled, n_classes)
        for scope, report in scored.items():
            out.setdefault((name, k, scope), []).append(report["accuracy"])

    pixels = images.reshape(len(images), -1).astype(np.float32) / 255.0
    for training, w_file in enumerate(w_files):
        with np.load(w_file) as d:
            W = d["embeddings"].astype(np.float32)
        fw = prepare_features(W)
        for r in range(repeats):
            t0 = time.perf_counter()
            pca = PCA(n_components=50, random_state=r).fit_transform(pixels).astype(np.float32)
            fp = prepare_features(pca)
            combined = np.hstack([fw, fp])
            balanced = np.hstack([fw / np.sqrt(fw.shape[1]), fp / np.sqrt(fp.shape[1])])
            maps = {name: TSNEProjector(random_state=r).fit_transform(x)
                    for name, x in (("W", W), ("P", pca), ("C", combined), ("B", balanced))}
            side_by_side = np.hstack([maps["W"] / maps["W"].std(), maps["P"] / maps["P"].std()])
            one_by_one = server_picks(fw, max(KS), r, online.LADDER)
            whole_w = server_picks(fw, max(KS), r, online.LADDER, max_dimensions=fw.shape[1])
            exact = tuple(range(2, max(KS) + 11))
            for k in KS:
                lw, lp, lc, lb = (typiclust(x, k, r) for x in (fw, fp, combined, balanced))
                record(BASELINE, k, lp, nn(maps["P"], lp))
                record("W: typiclust + 1-NN in W's map (the grid's best)", k, lw, nn(maps["W"], lw))
                record("W: typiclust + 1-NN in the pixel map", k, lw, nn(maps["P"], lw))
                record("W: typiclust + 1-NN in both maps side by side (4-D)", k, lw, nn(side_by_side, lw))
                in_w = nn(maps["W"], lw)   # a tie between the two maps goes to W's map
                record("W: typiclust + both maps' 1-NN votes", k, lw, 1.001 * in_w + nn(maps["P"], lw))
                record("W: typiclust + 3-NN in W's map", k, lw, knn_scores(maps["W"], labels, lw, n_classes, 3))
                logistic = classify_features(fw, lw, labels[lw], n_classes, "logistic", random_state=r).scores
                record("W: typiclust + (1-NN in W's map + logistic on W)", k, lw, nn(maps["W"], lw) + logistic)
                record("combined: typiclust + 1-NN in its map (the grid's)", k, lc, nn(maps["C"], lc))
                record("combined: typiclust + 1-NN in both maps side by side", k, lc, nn(side_by_side, lc))
                record("balanced: typiclust + 1-NN in its map", k, lb, nn(maps["B"], lb))
                record("W: server typiclust, one at a time (the product)", k, np.asarray(one_by_one[:k]),
                       nn(maps["W"], np.asarray(one_by_one[:k])))
                record("W: server typiclust, one at a time, all 128 dimensions", k, np.asarray(whole_w[:k]),
                       nn(maps["W"], np.asarray(whole_w[:k])))
                batch = np.asarray(server_picks(fw, k, r, exact, one_at_a_time=False))
                record("W: server typiclust, exact cluster count, a batch", k, batch, nn(maps["W"], batch))
            print(f"training {training} repeat {r}: {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def table(out: dict[tuple[str, int, str], list[float]]) -> str:
    lines = ["| pipeline | " + " | ".join(f"{s.split('_')[0]} k={k}" for k, s in CELLS) + " |",
             "| --- |" + " --- |" * len(CELLS)]
    names = sorted({name for name, _, _ in out}, key=lambda n: (n != BASELINE, n))
    for name in names:
        cells = []
        for k, scope in CELLS:
            a, b = np.asarray(out[(name, k, scope)]), np.asarray(out[(BASELINE, k, scope)])
            d = (a - b) * 100
            cells.append(f"{a.mean():.3f}" if name == BASELINE else
                         f"{a.mean():.3f} ({d.mean():+.1f} ± {d.std(ddof=1) / np.sqrt(d.size):.1f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="npz with images, labels, groups")
    parser.add_argument("--w", type=Path, nargs="+", required=True, help="W of each training (embeddings npz)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, help="write every accuracy here (JSON)")
    args = parser.parse_args()
    with np.load(args.data, allow_pickle=False) as d:
        images, labels, groups = d["images"], d["labels"].astype(np.int64), d["groups"]
    out = run(images, labels, groups, args.w, args.repeats)
    print(table(out))
    if args.out:
        args.out.write_text(json.dumps({" | ".join(map(str, key)): v for key, v in out.items()}, indent=1))


if __name__ == "__main__":
    main()
