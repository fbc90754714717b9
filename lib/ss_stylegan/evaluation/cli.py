"""``python -m ss_stylegan.evaluate``: the label-efficiency evaluation's command line.

Embeds the slices (SS-StyleGAN W, trained or reused, beside pixel PCA and their combination), runs the
protocol (:mod:`~ss_stylegan.evaluation.protocol`) over the grid of pipelines
(:mod:`~ss_stylegan.evaluation.grid`), and writes ``results.json``, ``results.md``, ``studies.md`` and the
figures into ``--out``; ``--anytime`` scores the checkpoints a training leaves on the way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ss_stylegan.evaluation.anytime import AnytimeRecorder, write_anytime
from ss_stylegan.evaluation.datasets import dataset_meta, load_dataset
from ss_stylegan.evaluation.embedders import (
    CombinedEmbedder,
    Embedder,
    GANEmbedder,
    PixelPCAEmbedder,
    PrecomputedEmbedder,
)
from ss_stylegan.evaluation.protocol import run_protocol
from ss_stylegan.evaluation.report import markdown_report, write_outputs
from ss_stylegan.selection.features import FEATURES
from ss_stylegan.selection.fps import STARTS
from ss_stylegan.training.recipes import RECIPES, configs_from_recipe, get_recipe

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ss_stylegan.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="npz (images, labels[, classes, groups]) or folder of NIfTI + JSON")
    p.add_argument("--out", required=True, help="output folder for results.md / results.json / PNGs")
    p.add_argument("--resolution", type=int, default=None, help="resize slices to this side (default: as stored)")
    p.add_argument("--k", type=int, nargs="+", default=[10, 20, 50], help="numbers of labelled slices")
    p.add_argument("--repeats", type=int, default=5, help="repetitions with different t-SNE / selection seeds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (GAN training and embedding)")
    p.add_argument("--recipe", default=None, choices=sorted(RECIPES),
                   help="train with the app's own recipe for a device (network, training, t-SNE perplexity); "
                        "--model-config / --train-config and the flags below override parts of it")
    p.add_argument("--kimg", type=float, default=None, help="GAN training length in thousands of images")
    p.add_argument("--steps", type=int, default=None, help="GAN training length in steps (overrides --kimg)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--model-config", default=None, help="JSON file or inline JSON of ModelConfig fields")
    p.add_argument("--train-config", default=None, help="JSON file or inline JSON of TrainConfig fields")
    p.add_argument("--max-train-minutes", type=float, default=None,
                   help="training-time budget of each GAN training (the results record the steps done)")
    p.add_argument("--eval-every-minutes", type=float, default=None,
                   help="anytime evaluation: score the map every this many minutes of training time")
    p.add_argument("--eval-every-kimg", type=float, default=None,
                   help="anytime evaluation: score the map every this many thousand training images")
    p.add_argument("--retrain-per-repeat", action="store_true", help="train a new GAN for every repeat")
    p.add_argument("--embeddings", default=None, help="npz with 'embeddings' [N, D]: skip GAN training")
    p.add_argument("--model-dir", default=None, help="reuse a trained SS-StyleGAN folder: embed only")
    p.add_argument("--no-gan", action="store_true", help="only the raw-pixel PCA baseline")
    p.add_argument("--pca-components", type=int, default=50)
    p.add_argument("--perplexity", type=float, default=None, help="t-SNE perplexity (default: the recipe's, or 30)")
    p.add_argument("--tsne-iter", type=int, default=500)
    p.add_argument("--fps-start", default="random", choices=STARTS,
                   help="FPS's first pick: random (the paper's protocol; each repeat's seed), central (the slice "
                        "nearest the map's centre, the server's default) or farthest (the one farthest from it)")
    p.add_argument("--no-grid", action="store_true",
                   help="only the paper's pipeline (FPS / random in the map, 1-NN in the map), not the grid of "
                        "selections and classifiers in the whole embedding")
    p.add_argument("--features", default="standardised", choices=FEATURES,
                   help="how the whole embedding is prepared for the grid's selections and classifiers")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


def _json_arg(value: str | None) -> dict[str, Any]:
    if not value:
        return {}
    text = Path(value).read_text(encoding="utf-8") if Path(value).is_file() else value
    return json.loads(text)


def gan_configs(args: argparse.Namespace, data_resolution: int) -> tuple[Any, Any]:
    """``(ModelConfig, TrainConfig)`` of the GAN: the recipe (if any), then JSON overrides, then flags. Maps
    are scored only at the stages ``--eval-every-*`` asks for, not at the recipe's publishing interval."""
    recipe = get_recipe(args.recipe) if args.recipe else None
    if recipe is not None:
        recipe = dataclasses.replace(recipe, train=recipe.train.replace(milestone_minutes=None, milestone_kimg=None))
    flags = {"kimg": args.kimg, "steps": args.steps, "batch_size": args.batch_size,
             "max_minutes": args.max_train_minutes, "milestone_minutes": args.eval_every_minutes,
             "milestone_kimg": args.eval_every_kimg}
    return configs_from_recipe(recipe, resolution=None if recipe else data_resolution,
                               model=_json_arg(args.model_config), train={**_json_arg(args.train_config), **flags})


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(args.data, args.resolution)
    perplexity = args.perplexity if args.perplexity is not None else (
        get_recipe(args.recipe).perplexity if args.recipe else 30.0)
    tsne = {"perplexity": perplexity, "n_iter": args.tsne_iter}
    embedders: list[Embedder] = []
    anytime: AnytimeRecorder | None = None
    gan: GANEmbedder | None = None
    if args.embeddings:
        embedders.append(PrecomputedEmbedder(args.embeddings))
    elif not args.no_gan:
        model_cfg, train_cfg = gan_configs(args, int(data.images.shape[1]))
        if train_cfg.milestone_minutes or train_cfg.milestone_kimg:
            anytime = AnytimeRecorder(data, "ss_stylegan", args.k, args.repeats, args.seed, tsne, out, args.fps_start,
                                      not args.no_grid, args.features)
        gan = GANEmbedder(model_cfg, train_cfg, out, args.device, args.retrain_per_repeat,
                          Path(args.model_dir) if args.model_dir else None, on_stage=anytime)
        embedders.append(gan)
    pixels = PixelPCAEmbedder(args.pca_components, args.seed)
    embedders.append(pixels)
    if len(embedders) == 2 and not args.no_grid:  # W next to pixel PCA, each standardised
        embedders.append(CombinedEmbedder(embedders[0], embedders[1]))
    start = time.perf_counter()
    result = run_protocol(data, embedders, args.k, args.repeats, args.seed, tsne, args.fps_start,
                          grid=not args.no_grid, features_kind=args.features)
    meta = {"data": dataset_meta(data), "ks": sorted(set(args.k)), "repeats": args.repeats, "seed": args.seed,
            "fps_start": args.fps_start, "grid": not args.no_grid, "features": args.features,
            "recipe": args.recipe, "tsne": tsne, "embeddings": {e.name: e.describe() for e in embedders},
            "wall_seconds": round(time.perf_counter() - start, 1), "argv": list(argv) if argv is not None else sys.argv[1:]}
    paths = write_outputs(result, data, meta, out)
    print(markdown_report(result, meta))
    if anytime is not None and gan is not None:
        paths.update(write_anytime(anytime.finish(gan, result, pixels), meta, out))
        print(Path(paths["anytime_md"]).read_text(encoding="utf-8"))
    print("wrote", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
