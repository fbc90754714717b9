"""The compute-scaling study: train several recipes on one dataset, score the map as training goes on.

Each recipe is one run of ``python -m ss_stylegan.evaluate`` with the anytime evaluation (a scored map every
``--every-kimg`` thousand images, pixel PCA in the same run with the same seeds), in its own output folder.
Runs are budgeted in images (kimg), not wall time, so that several can share a machine; minutes are derived
from each recipe's images/s measured side by side on the same machine (``--rates``, from
``benchmarks/bench_step.py`` or :func:`measure_rates` here), i.e. what one 2-thread training would do alone.

    .venv/bin/python benchmarks/study_recipes.py --data ../shared/data/iqothnccd/iqothnccd_64.npz \
        --out runs/study --recipes base32 rec30_32 --kimg 16 --every-kimg 2 --jobs 2
    .venv/bin/python benchmarks/study_recipes.py --out runs/study --table-only   # collect the table again

Writes ``<out>/<recipe>/`` (the evaluation's files) and ``<out>/study.md`` (one table: recipe x stage x
accuracy at each k on both scopes, the pixel-PCA rows of each run, and the diagnostics).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# name -> (description, evaluate arguments). Every recipe runs on top of the CPU recipe's settings (--recipe cpu)
# with the overrides given; "res" is the model resolution (the pixel baseline keeps the data's).
RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "app_cpu": ("the app's CPU recipe as it stands", {}),
    "base64": ("small network at 64, beta 1, augmentation", {"model": {"resolution": 64},
                                                             "train": {"rec_weight": 1.0}}),
    "base32": ("small network at 32, beta 1, augmentation", {"model": {"resolution": 32},
                                                             "train": {"rec_weight": 1.0}}),
    "rec10_32": ("32, beta 10", {"model": {"resolution": 32}, "train": {"rec_weight": 10.0}}),
    "rec10_32_cl": ("32, beta 10, channels_last", {"model": {"resolution": 32},
                                                   "train": {"rec_weight": 10.0, "channels_last": True}}),
    "rec30_32": ("32, beta 30", {"model": {"resolution": 32}, "train": {"rec_weight": 30.0}}),
    "rec30_noaug_32": ("32, beta 30, no augmentation", {"model": {"resolution": 32},
                                                        "train": {"rec_weight": 30.0, "augment": ""}}),
    # one change each to the app's CPU recipe (small at 32, beta 10): the knobs of issue 8 not covered above
    "wdim64": ("app CPU recipe, w_dim 64", {"model": {"w_dim": 64}}),
    "wdim256": ("app CPU recipe, w_dim 256", {"model": {"w_dim": 256}}),
    "narrow": ("app CPU recipe, channels at most 64", {"model": {"channel_max": 64}}),
    "map2": ("app CPU recipe, 2 mapping layers", {"model": {"mapping_layers": 2}}),
    "batch32": ("app CPU recipe, batch 32", {"train": {"batch_size": 32}}),
    "lr1e3": ("app CPU recipe, learning rates 0.001", {"train": {"g_lr": 0.001, "d_lr": 0.001}}),
    "enc03": ("app CPU recipe, lambda (encoder NLL) 0.3", {"train": {"enc_weight": 0.3}}),
    "enc3": ("app CPU recipe, lambda (encoder NLL) 3", {"train": {"enc_weight": 3.0}}),
}


def _evaluate_args(data: str, out: Path, spec: dict[str, Any], args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "ss_stylegan.evaluate", "--data", data, "--out", str(out), "--recipe", "cpu",
           "--kimg", str(args.kimg), "--eval-every-kimg", str(args.every_kimg), "--repeats", str(args.repeats),
           "--threads", str(args.threads)]
    if spec.get("model"):
        cmd += ["--model-config", json.dumps(spec["model"])]
    # the budget is --kimg: no time limit, so that runs sharing a machine train equally far
    cmd += ["--train-config", json.dumps({**spec.get("train", {}), "max_minutes": None})]
    if spec.get("perplexity"):
        cmd += ["--perplexity", str(spec["perplexity"])]
    return cmd


def run_all(args: argparse.Namespace) -> None:
    pending = list(args.recipes)
    running: list[tuple[str, subprocess.Popen[bytes]]] = []
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            out = Path(args.out) / name
            out.mkdir(parents=True, exist_ok=True)
            cmd = _evaluate_args(args.data, out, RECIPES[name][1], args)
            (out / "command.txt").write_text(" ".join(cmd) + "\n", encoding="utf-8")
            log = open(out / "log.txt", "wb")
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)))
            print(f"started {name}", flush=True)
        time.sleep(5)
        for item in list(running):
            if item[1].poll() is not None:
                running.remove(item)
                print(f"finished {item[0]} (exit {item[1].returncode})", flush=True)


def measure_rates(names: list[str], steps: int = 6) -> dict[str, float]:
    """Training images/s of each recipe's network and settings, side by side in interleaved rounds."""
    import numpy as np
    import torch

    from ss_stylegan.config import ModelConfig, TrainConfig
    from ss_stylegan.training.recipes import get_recipe
    from ss_stylegan.training.loop import Trainer

    cpu = get_recipe("cpu")
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            spec = RECIPES[name][1]
            model = ModelConfig.from_dict({**cpu.model().to_dict(), **spec.get("model", {})})
            train = TrainConfig.from_dict({**cpu.train.to_dict(), **spec.get("train", {}), "resume": False})
            images = (np.random.default_rng(0).random((256, model.resolution, model.resolution)) * 255).astype(np.uint8)
            torch.manual_seed(0)
            trainers[name] = Trainer(images, model, train, Path(tmp) / name, torch.device("cpu"))
            trainers[name].train_step()
        times: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(steps):
            for name, tr in trainers.items():
                tr.step = 1     # never a lazy-R1 step, as in bench_step.py
                t0 = time.perf_counter()
                tr.train_step()
                times[name].append(time.perf_counter() - t0)
    return {n: trainers[n].cfg.batch_size / statistics.median(t) for n, t in times.items()}


def table(out: Path, rates: dict[str, float]) -> str:
    lines = ["| recipe | minutes (alone, 2 threads) | kimg | W+FPS all k=10 / 20 / 50 | W+FPS unseen k=10 / 20 / 50 "
             "| W+random all k=10 / 20 / 50 | same-scan@10 | linear probe |", "| --- " * 8 + "|"]
    for run in sorted(p for p in out.iterdir() if (p / "anytime.json").is_file()):
        data = json.loads((run / "anytime.json").read_text(encoding="utf-8"))
        rate = rates.get(run.name)

        def acc(rows: list[dict[str, Any]], method: str, scope: str) -> str:
            vals = []
            for k in (10, 20, 50):
                row = next((r for r in rows if (r["method"], r["k"], r["scope"]) == (method, k, scope)), None)
                vals.append("–" if row is None else f"{row['accuracy_mean']:.3f}")
            return " / ".join(vals)

        for base in data["baseline"][:1]:
            emb = base["method"].rsplit(" + ", 1)[0]
            diag = data.get("baseline_diagnostics", {}).get(emb, {})
            lines.append(f"| {run.name}: {emb} (baseline) | – | – | {acc(data['baseline'], emb + ' + fps', 'all_unlabelled')} "
                         f"| {acc(data['baseline'], emb + ' + fps', 'unseen_groups')} "
                         f"| {acc(data['baseline'], emb + ' + random', 'all_unlabelled')} "
                         f"| {diag.get('same_group_at_10', float('nan')):.3f} | {diag.get('linear_probe', float('nan')):.3f} |")
        for st in data["stages"]:
            minutes = f"{st['kimg'] * 1000 / rate / 60:.1f}" if rate else "–"
            d = st.get("diagnostics", {})
            lines.append(f"| {run.name} | {minutes} | {st['kimg']:.1f} | {acc(st['summary'], 'ss_stylegan + fps', 'all_unlabelled')} "
                         f"| {acc(st['summary'], 'ss_stylegan + fps', 'unseen_groups')} "
                         f"| {acc(st['summary'], 'ss_stylegan + random', 'all_unlabelled')} "
                         f"| {d.get('same_group_at_10', float('nan')):.3f} | {d.get('linear_probe', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/iqothnccd/iqothnccd_64.npz")
    p.add_argument("--out", required=True)
    p.add_argument("--recipes", nargs="+", default=["app_cpu"], choices=sorted(RECIPES))
    p.add_argument("--kimg", type=float, default=16.0, help="training length of every recipe (thousand images)")
    p.add_argument("--every-kimg", type=float, default=2.0, help="a scored map every this many thousand images")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=2, help="runs at the same time")
    p.add_argument("--rates", default=None, help="JSON {recipe: images/s}; measured here when absent")
    p.add_argument("--table-only", action="store_true", help="only collect the table of finished runs")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        run_all(args)
    names = sorted(p.name for p in out.iterdir() if (p / "anytime.json").is_file() and p.name in RECIPES)
    rates_path = out / "rates.json"
    if args.rates:
        rates = json.loads(Path(args.rates).read_text(encoding="utf-8")) if Path(args.rates).is_file() else json.loads(args.rates)
    elif rates_path.is_file():
        rates = json.loads(rates_path.read_text(encoding="utf-8"))
    else:
        rates = measure_rates(names) if names else {}
    rates_path.write_text(json.dumps(rates, indent=1), encoding="utf-8")
    text = table(out, rates)
    (out / "study.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
