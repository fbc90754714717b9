"""The evaluation's outputs: ``results.json``, the markdown report and its tables, the figures."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ss_stylegan.evaluation.datasets import Dataset
from ss_stylegan.evaluation.protocol import SCOPES
from ss_stylegan.evaluation.studies import studies_markdown
from ss_stylegan.storage.atomic import atomic_write_text

log = logging.getLogger(__name__)

def _paired_cell(rows: Sequence[dict[str, Any]], method: str, k: int, scope: str) -> str:
    row = next((r for r in rows if (r["method"], r["k"], r["scope"]) == (method, k, scope)), None)
    if row is None:
        return "n/a"
    se = "" if math.isnan(row["diff_se"]) else f" ± {row['diff_se']:.3f}"
    return f"{row['diff_mean']:+.3f}{se} ({row['wins']}/{row['repeats']})"


def _paired_section(rows: Sequence[dict[str, Any]], ks: Sequence[int], labels: Sequence[tuple[str, str]],
                    scope: str) -> list[str]:
    """Markdown table of paired differences: one row per ``(method, label)``, one column per k."""
    if not rows:
        return []
    what = "unseen scans only" if scope == "unseen_groups" else "all unlabelled slices"
    lines = [f"## Accuracy minus {rows[0]['baseline']}, paired by repeat — {what}", "",
             "Mean ± standard error of the per-repeat difference (same t-SNE and selection seeds), and in how "
             "many repeats the method scored higher. A difference within two standard errors of 0 is one the "
             "repeats cannot tell from noise.", "",
             "| method | " + " | ".join(f"k={k}" for k in ks) + " |", "| --- | " + " | ".join("---" for _ in ks) + " |"]
    for method, label in labels:
        lines.append(f"| {label} | " + " | ".join(_paired_cell(rows, method, k, scope) for k in ks) + " |")
    return lines + [""]


def _diag_cell(diag: dict[str, float], key: str) -> str:
    return f"{diag[key]:.3f}" if key in diag and diag[key] is not None and not math.isnan(diag[key]) else "–"


def _mean_cell(rows: list[dict[str, Any]], method: str, k: int, scope: str, metric: str = "accuracy") -> str:
    row = next((r for r in rows if (r["method"], r["k"], r["scope"]) == (method, k, scope)), None)
    value = math.nan if row is None else row.get(f"{metric}_mean", math.nan)
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


# ---------------------------------------------------------------------------------------- reports
def markdown_report(result: dict[str, Any], meta: dict[str, Any]) -> str:
    """Tables of mean ± std per method (rows) and k (columns), for each metric and scope."""
    summary = result["summary"]
    ks = sorted({r["k"] for r in summary})
    methods = sorted({r["method"] for r in summary})
    lines = [f"# Label-efficiency evaluation: {meta['data']['source']}", "",
             f"{meta['data']['n']} slices, classes {meta['data']['class_counts']}, {meta['data']['n_groups']} groups; "
             f"{meta['repeats']} repeats (t-SNE and selection seeds "
             f"{meta['seed']}..{meta['seed'] + meta['repeats'] - 1}); FPS's first pick: {meta.get('fps_start', 'random')}.",
             ""]
    for name, info in meta["embeddings"].items():
        lines.append(f"- `{name}`: {json.dumps(info, sort_keys=True)}")
    lines.append("")
    metrics = ["accuracy", "majority_accuracy", "balanced_accuracy",
               "auc" if len(meta["data"]["classes"]) == 2 else "macro_auc"]
    for scope in SCOPES:
        what = ("slices of groups (scans) with no labelled slice" if scope == "unseen_groups"
                else "every slice that was not labelled (the paper's protocol)")
        for metric in metrics:
            title = ("majority accuracy (chance: always the most common class of the k labels)"
                     if metric == "majority_accuracy" else metric.replace("_", " "))
            lines += [f"## {title} — scored on {what}", "",
                      "| method | " + " | ".join(f"k={k}" for k in ks) + " |",
                      "| --- | " + " | ".join("---" for _ in ks) + " |"]
            for method in methods:
                cells = []
                for k in ks:
                    row = next(r for r in summary if (r["method"], r["k"], r["scope"]) == (method, k, scope))
                    mean, std = row.get(f"{metric}_mean", math.nan), row.get(f"{metric}_std", math.nan)
                    cells.append("n/a" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}")
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
        paired = result.get("paired") or []
        lines += _paired_section(paired, ks, [(m, m) for m in sorted({r["method"] for r in paired})], scope)
    best_rows = result.get("paired_best") or []
    if best_rows:
        lines += ["# Against pixel PCA with its own best pipeline", "",
                  f"Pixel PCA's best pipeline (mean accuracy over every k and both scopes): "
                  f"**{best_rows[0]['baseline']}**; every other method minus it, repeat by repeat.", ""]
        for scope in SCOPES:
            lines += _paired_section(best_rows, ks, [(m, m) for m in sorted({r["method"] for r in best_rows})], scope)
    if result.get("unseen_reference"):
        lines += ["## Reference for the unseen-scan scope", "",
                  "Accuracy of 1-NN in the map when every slice is answered by the nearest slice of *another* scan, "
                  "as if every other scan were labelled (mean over repeats): how far above chance this map puts "
                  "the unseen-scan scope when labels are plentiful. Not a bound: a few labels can land above or "
                  "below it.",
                  "", "| embedding | reference |", "| --- | --- |"]
        lines += [f"| {name} | {value:.3f} |" for name, value in sorted(result["unseen_reference"].items())]
        lines.append("")
    return "\n".join(lines)


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_outputs(result: dict[str, Any], data: Dataset, meta: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.md``, ``tsne_maps.png`` and ``label_efficiency_*.png``."""
    from ss_stylegan.evaluation.plots import plot_label_efficiency, plot_maps

    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "summary": result["summary"], "paired": result.get("paired", []),
               "paired_best": result.get("paired_best", []),
               "study_summary": result.get("study_summary", []),
               "unseen_reference": result.get("unseen_reference", {}),
               "timings": result["timings"], "records": result["records"]}
    paths = {"json": atomic_write_text(out / "results.json", json.dumps(_json_safe(payload), indent=1)),
             "md": atomic_write_text(out / "results.md", markdown_report(result, meta))}
    if result.get("study_summary"):
        paths["studies"] = atomic_write_text(out / "studies.md", studies_markdown(result["study_summary"]))
    kmax = max(r["k"] for r in result["summary"])
    paths["maps"] = plot_maps(result["maps"], data.labels, data.classes, result["picks"], out / "tsne_maps.png",
                              title=f"t-SNE maps (repeat 0), coloured by true class; {kmax} picks marked")
    for scope in SCOPES:
        paths[scope] = plot_label_efficiency(result["summary"], out / f"label_efficiency_{scope}.png", scope)
    return paths
