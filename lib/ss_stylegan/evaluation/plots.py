"""Figures of the label-efficiency evaluation (matplotlib, written as PNG atomically)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ss_stylegan.storage.atomic import atomic_write_bytes


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_maps(
    maps: dict[str, np.ndarray],
    labels: np.ndarray,
    class_names: Sequence[str],
    picks: dict[str, dict[str, np.ndarray]],
    path: Path,
    title: str = "",
) -> Path:
    """One panel per embedding: the t-SNE map ``[N, 2]`` coloured by true class, picks marked.

    Args:
        maps: embedding name -> map positions ``[N, 2]``.
        labels: ``[N]`` true class indices.
        class_names: names of the classes.
        picks: embedding name -> selector name -> picked indices ``[k]`` (in pick order).
        path: output PNG.
        title: figure title.
    """
    names = list(maps)
    fig, axes = plt.subplots(1, len(names), figsize=(6.0 * len(names), 5.6), squeeze=False)
    cmap = plt.get_cmap("tab10")
    markers = {"fps": ("*", 180), "random": ("^", 70)}
    for ax, name in zip(axes[0], names):
        xy = maps[name]
        for c, cname in enumerate(class_names):
            m = labels == c
            ax.scatter(xy[m, 0], xy[m, 1], s=6, alpha=0.55, color=cmap(c % 10), label=f"{cname} ({m.sum()})")
        for sel, idx in picks.get(name, {}).items():
            marker, size = markers.get(sel, ("o", 60))
            ax.scatter(xy[idx, 0], xy[idx, 1], s=size, marker=marker, facecolor="none" if sel != "fps" else "k",
                       edgecolor="k", linewidth=1.0, label=f"{sel} picks ({len(idx)})")
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="best", fontsize=8, framealpha=0.8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_label_efficiency(summary: list[dict[str, Any]], path: Path, scope: str, title: str = "") -> Path:
    """Accuracy and balanced accuracy against the number of labels, mean ± std per method.

    Args:
        summary: rows with ``method``, ``k``, ``scope`` and ``<metric>_mean`` / ``<metric>_std``.
        path: output PNG.
        scope: which scoring scope to plot (``"unseen_groups"`` or ``"all_unlabelled"``).
        title: figure title.
    """
    rows = [r for r in summary if r["scope"] == scope]
    methods = sorted({r["method"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    for ax, metric in zip(axes, ("accuracy", "balanced_accuracy")):
        for i, method in enumerate(methods):
            mr = sorted((r for r in rows if r["method"] == method), key=lambda r: r["k"])
            ks = np.array([r["k"] for r in mr], dtype=float)
            offset = (i - (len(methods) - 1) / 2) * 0.012 * ks  # small shift so error bars do not overlap
            ax.errorbar(ks + offset, [r[f"{metric}_mean"] for r in mr], yerr=[r[f"{metric}_std"] for r in mr],
                        marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ks_all = sorted({r["k"] for r in rows})
        ax.set_xticks(ks_all)
        ax.set_xticklabels([str(k) for k in ks_all])
        ax.minorticks_off()
        ax.set_xlabel("labelled slices k")
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or f"label efficiency (scored on {scope.replace('_', ' ')}; mean ± std over repeats)")
    return _save(fig, path)


def plot_anytime(anytime: dict[str, Any], path: Path, selector: str = "fps") -> Path:
    """Accuracy of the map against training time and images, per scope, with the baseline of the same run.

    Args:
        anytime: ``{"embedding", "stages": [{"minutes", "kimg", "summary"}], "baseline": [summary rows]}``
            as written by :func:`ss_stylegan.evaluation.anytime.AnytimeRecorder.finish`.
        path: output PNG.
        selector: which selection's rows to draw (``fps`` or ``random``).
    """
    name, stages = anytime["embedding"], anytime["stages"]
    ks = sorted({r["k"] for st in stages for r in st["summary"]})
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharey="row")
    for row, scope in enumerate(("all_unlabelled", "unseen_groups")):
        for col, xkey in enumerate(("minutes", "kimg")):
            ax = axes[row, col]
            for i, k in enumerate(ks):
                pts = [(st[xkey], r["accuracy_mean"], r["accuracy_std"]) for st in stages for r in st["summary"]
                       if (r["method"], r["k"], r["scope"]) == (f"{name} + {selector}", k, scope)]
                if pts:
                    x, y, e = (np.array(v, dtype=float) for v in zip(*pts))
                    ax.errorbar(x, y, yerr=e, marker="o", capsize=3, color=cmap(i), label=f"W + {selector}, k={k}")
                for r in anytime["baseline"]:
                    if (r["method"].endswith(f" + {selector}") and r["k"] == k and r["scope"] == scope):
                        ax.axhline(r["accuracy_mean"], color=cmap(i), linestyle="--", linewidth=1,
                                   label=f"{r['method']}, k={k}")
            ax.set_xlabel("training minutes" if xkey == "minutes" else "training images (thousands)")
            ax.set_ylabel(f"accuracy, {scope.replace('_', ' ')}")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.suptitle("anytime evaluation: the map of each training stage (mean ± std over repeats); dashed: baseline")
    return _save(fig, path)
