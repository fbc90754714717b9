"""Command line: ``python -m ss_stylegan train|embed ...``.

Train on every slice of a folder of studies (no labels needed)::

    python -m ss_stylegan train --studies ./studies --out ./run --resolution 64 --kimg 500 --device cuda

On every GPU of this machine (one process each, ``--batch-size`` is the global batch)::

    python -m ss_stylegan train --studies ./studies --out ./run --gpus all

On several machines, start the same command without ``--gpus`` under ``torchrun`` on each (see the README);
``--nproc N`` starts N processes on ``--device`` (on a CPU: gloo processes, for testing).

Embed every slice into W with a trained model::

    python -m ss_stylegan embed --studies ./studies --model ./run --out embeddings.npz

Build the slice map of a folder with a trained model (e.g. one trained on a GPU machine) and publish it into the
workspace a server over that folder uses (``<studies>/.ss_stylegan`` unless ``--workspace``)::

    python -m ss_stylegan map --studies ./studies --model ./run
    monailabel start_server --app monailabel_app --studies ./studies    # serves that map as it is

``--config file.json`` holds ``{"slice": {...}, "model": {...}, "train": {...}}`` (any section may be
omitted; keys are the fields of :class:`~ss_stylegan.config.SliceConfig`, ``ModelConfig`` and
``TrainConfig``); flags given on the command line override it. The resolved settings are written
to ``<out>/config.json`` and ``<out>/slice_config.json`` (the latter is reused by ``embed``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ss_stylegan.config import ConfigError, SliceConfig

logger = logging.getLogger("ss_stylegan.cli")

SLICE_CONFIG_NAME = "slice_config.json"


class CLIError(RuntimeError):
    """A command cannot run as asked; the message says what to change."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ss_stylegan", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train SS-StyleGAN on every slice of a folder of studies")
    t.add_argument("--studies", required=True, type=Path, help="folder of studies (NIfTI, NRRD, DICOM, PNG, ...)")
    t.add_argument("--out", required=True, type=Path, help="output folder (checkpoints, metrics, grids)")
    t.add_argument("--config", type=Path, help='JSON file {"slice": {...}, "model": {...}, "train": {...}}')
    t.add_argument("--resolution", type=int, help="slice / model resolution: 32, 64, 128 or 256")
    t.add_argument("--kimg", type=float, help="training length in thousands of images")
    t.add_argument("--steps", type=int, help="training length in steps (overrides --kimg)")
    t.add_argument("--batch-size", type=int, help="images per step")
    t.add_argument("--seed", type=int, help="random seed")
    t.add_argument("--preset", choices=("default", "small", "tiny"),
                   help="network size: default (StyleGAN2-sized, for a GPU), small (a CPU), tiny (smoke runs); "
                        "without --preset or a model section in --config: default on a GPU, small on a CPU")
    t.add_argument("--tiny", action="store_true", help="same as --preset tiny")
    t.add_argument("--cache-dir", type=Path, help="slice cache folder (default <out>/slice_cache)")
    t.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    t.add_argument("--gpus", help="train on several GPUs of this machine, one process each: all, a number, "
                                  "or GPU ids such as 0,2")
    t.add_argument("--nproc", type=int, help="train on this many processes of this machine on --device "
                                             "(gloo processes on a CPU, for testing)")
    t.add_argument("--no-resume", action="store_true", help="start over even if <out> holds a checkpoint")

    e = sub.add_parser("embed", help="embed every slice of a folder of studies into W")
    e.add_argument("--studies", required=True, type=Path, help="folder of studies")
    e.add_argument("--model", required=True, type=Path, help="training output folder or checkpoint file")
    e.add_argument("--out", required=True, type=Path, help="output .npz (image_ids, slice_indices, w, model_version)")
    e.add_argument("--batch-size", type=int, default=256, help="slices per forward pass")
    e.add_argument("--cache-dir", type=Path, help="slice cache folder (default <model dir>/slice_cache)")
    e.add_argument("--device", default="cpu", help="cpu, cuda, ...")

    m = sub.add_parser("map", help="build the slice map of a folder of studies with a trained model and publish it "
                                   "into the workspace a server over that folder uses")
    m.add_argument("--studies", required=True, type=Path, help="folder of studies (the server's --studies)")
    m.add_argument("--model", required=True, type=Path, help="training output folder or checkpoint file")
    m.add_argument("--workspace", type=Path, help="the server's workspace (default <studies>/.ss_stylegan, the "
                                                  "server's default; --conf workspace moves it)")
    m.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity")
    m.add_argument("--random-state", type=int, default=0, help="t-SNE seed")
    m.add_argument("--batch-size", type=int, default=256, help="slices per forward pass")
    m.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    return p


def _load_sections(path: Path | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot read config file {path}: {exc}") from exc
    unknown = sorted(set(data) - {"slice", "model", "train"})
    if not isinstance(data, dict) or unknown:
        raise CLIError(f"config file {path}: top-level keys must be 'slice', 'model', 'train'; got {unknown}")
    return data


def _build_cache(studies: Path, slice_cfg: SliceConfig, cache_dir: Path):  # noqa: ANN202 - SliceCache
    from ss_stylegan.data.cache import SliceCache, find_studies

    if not studies.is_dir():
        raise CLIError(f"studies folder {studies} does not exist")
    found = find_studies(studies)
    if not found:
        raise CLIError(f"no studies (NIfTI, NRRD, DICOM, PNG, JPEG) found in {studies}")
    cache = SliceCache.build(found, slice_cfg, cache_dir)
    for err in cache.errors:
        logger.warning("skipped study %s: %s", err.image_id, err.message)
    if len(cache) == 0:
        raise CLIError(f"no usable slice in {studies} ({len(cache.errors)} studies failed to read)")
    return cache


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from ss_stylegan.data.cache import SliceCache
    from ss_stylegan.model.devices import resolve_device
    from ss_stylegan.storage.atomic import atomic_write_text
    from ss_stylegan.training.distributed import context_for, env_world_size
    from ss_stylegan.training.launcher import launch, parse_gpus
    from ss_stylegan.training.recipes import configs_from_recipe

    sections = _load_sections(args.config)
    model_d = dict(sections.get("model", {}))
    preset = "tiny" if args.tiny else args.preset
    if preset is None and not model_d:
        preset = "default" if args.gpus or resolve_device(args.device).startswith("cuda") else "small"
    train_d = {**sections.get("train", {}), "kimg": args.kimg, "steps": args.steps, "batch_size": args.batch_size,
               "seed": args.seed, "resume": False if args.no_resume else None}
    model_cfg, train_cfg = configs_from_recipe(None, preset=preset, model=model_d, train=train_d,
                                               resolution=args.resolution or model_d.get("resolution", 64))
    slice_cfg = SliceConfig.from_dict({**sections.get("slice", {}), "resolution": model_cfg.resolution})

    if (args.gpus or args.nproc) and env_world_size() > 1:
        raise CLIError("--gpus / --nproc start their own processes; under torchrun leave them out")
    if args.gpus and args.nproc:
        raise CLIError("give --gpus (GPU processes) or --nproc (processes on --device), not both")
    gpus = parse_gpus(args.gpus) if args.gpus else None
    cache_dir = args.cache_dir or args.out / "slice_cache"
    ctx = context_for(torch.device(resolve_device(args.device))) if env_world_size() > 1 else None
    try:
        if ctx is None or ctx.is_main:   # under torchrun rank 0 builds the cache, the others open it
            cache = _build_cache(args.studies, slice_cfg, cache_dir)
            args.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.out / SLICE_CONFIG_NAME, json.dumps(slice_cfg.to_dict(), indent=2, sort_keys=True))
        if ctx is not None:
            ctx.barrier()
            if not ctx.is_main:
                cache = SliceCache.open(cache_dir)
        logger.info("training on %d slices at %dx%d for %d steps", len(cache), model_cfg.resolution,
                    model_cfg.resolution, train_cfg.total_steps())
        result = launch(cache.images, model_cfg, train_cfg, args.out, nproc=args.nproc, gpus=gpus,
                        device=resolve_device(args.device), progress_bar=True)
    except BaseException:
        if ctx is not None:
            ctx.close(wait=False)
        raise
    if ctx is not None:
        ctx.close()
    if ctx is None or ctx.is_main:
        print(json.dumps({"checkpoint": str(result.checkpoint), "model_version": result.model_version,
                          "step": result.step, "images_seen": result.images_seen, "losses": result.losses,
                          "world_size": result.world_size}))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from ss_stylegan.model.checkpoint import load_model
    from ss_stylegan.model.embedding import embed_images
    from ss_stylegan.storage.atomic import atomic_write

    model = load_model(args.model, device=args.device)
    model_dir = args.model if args.model.is_dir() else args.model.parent
    slice_cfg = _model_slice_config(model_dir, model.cfg.resolution)
    cache = _build_cache(args.studies, slice_cfg, args.cache_dir or model_dir / "slice_cache")
    w = embed_images(model, cache.images, batch_size=args.batch_size, device=args.device)
    arrays = {"image_ids": np.asarray(cache.image_ids, dtype=str), "slice_indices": np.asarray(cache.slices),
              "w": w, "model_version": np.asarray(model.model_version)}
    out = args.out if args.out.suffix == ".npz" else args.out.with_suffix(".npz")
    atomic_write(out, lambda fh: np.savez(fh, **arrays))
    print(json.dumps({"out": str(out), "n_slices": int(w.shape[0]), "w_dim": int(w.shape[1]),
                      "model_version": model.model_version}))
    return 0


def _model_slice_config(model_dir: Path, resolution: int) -> SliceConfig:
    """The slice settings a model was trained with (``slice_config.json`` beside its checkpoints)."""
    cfg_path = model_dir / SLICE_CONFIG_NAME
    slice_cfg = SliceConfig.load(cfg_path) if cfg_path.exists() else SliceConfig(resolution=resolution)
    if slice_cfg.resolution != resolution:
        raise CLIError(f"{cfg_path} has resolution {slice_cfg.resolution} but the model {resolution}")
    return slice_cfg


def cmd_map(args: argparse.Namespace) -> int:
    import os
    import shutil

    from ss_stylegan.maps.build import map_from_studies
    from ss_stylegan.model.checkpoint import load_model, resolve_checkpoint
    from ss_stylegan.model.devices import resolve_device
    from ss_stylegan.workspace import Workspace

    if not args.studies.is_dir():
        raise CLIError(f"studies folder {args.studies} does not exist")
    if not args.perplexity > 0:
        raise CLIError(f"--perplexity must be > 0, got {args.perplexity}")
    device = resolve_device(args.device)
    checkpoint = resolve_checkpoint(args.model)
    model = load_model(checkpoint, device="cpu")
    slice_cfg = _model_slice_config(checkpoint.parent, model.cfg.resolution)
    root = Path(args.workspace or args.studies / ".ss_stylegan")
    made = not root.exists()
    workspace = Workspace(root)
    try:
        slice_map, projector = map_from_studies(
            args.studies, checkpoint, slice_cfg, workspace.cache_dir, perplexity=args.perplexity,
            random_state=args.random_state, device=device, batch_size=args.batch_size,
            training={"step": model.step, "final": True}, n_jobs=os.cpu_count() or 1)
    except ValueError as exc:
        if made:  # nothing was published: leave no workspace behind in a folder that had none
            shutil.rmtree(root, ignore_errors=True)
        raise CLIError(str(exc)) from exc
    version = workspace.publish(slice_map, checkpoint, projector)
    print(json.dumps({"workspace": str(workspace.root), "version": version.name, "model_version": slice_map.model_version,
                      "n_slices": len(slice_map), "n_images": len(slice_map.image_set()), "errors": slice_map.errors}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (1 for a clear, expected error)."""
    from ss_stylegan.data.cache import SliceCacheError
    from ss_stylegan.maps.versions import WorkspaceError
    from ss_stylegan.model.checkpoint import CheckpointError
    from ss_stylegan.model.networks import ShapeError
    from ss_stylegan.training.distributed import DistributedError
    from ss_stylegan.training.loop import TrainingError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        return {"train": cmd_train, "embed": cmd_embed, "map": cmd_map}[args.command](args)
    except (CLIError, ConfigError, CheckpointError, TrainingError, ShapeError, SliceCacheError, DistributedError,
            WorkspaceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
