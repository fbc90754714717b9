"""The anytime evaluation: the protocol scored on the checkpoints a training leaves on the way, against
training time and kimg.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ss_stylegan.evaluation.datasets import Dataset
from ss_stylegan.evaluation.embedders import Embedder, FixedEmbedder, GANEmbedder
from ss_stylegan.evaluation.protocol import paired_differences, run_protocol
from ss_stylegan.evaluation.report import (
    _diag_cell,
    _json_safe,
    _mean_cell,
    _paired_section,
)
from ss_stylegan.storage.atomic import atomic_write_text

log = logging.getLogger(__name__)

class AnytimeRecorder:
    """The anytime evaluation: scores the map of every training stage with the protocol's seeds.

    Pass it as :class:`GANEmbedder`'s ``on_stage``; each call embeds nothing itself (it gets W), fits the
    maps and scores them like :func:`run_protocol`. :meth:`finish` adds the final stage from the main
    run, whose pixel-PCA rows (same seeds) are the baseline every stage is compared with.
    """

    def __init__(self, data: Dataset, name: str, ks: Sequence[int], repeats: int, seed: int,
                 tsne_params: dict[str, Any] | None, out: Path | None = None, fps_start: str = "random",
                 grid: bool = True, features_kind: str = "standardised") -> None:
        self.data, self.name, self.ks, self.repeats, self.seed = data, name, list(ks), repeats, seed
        self.tsne_params, self.fps_start = dict(tsne_params or {}), fps_start
        self.grid, self.features_kind = grid, features_kind
        self.stages: list[dict[str, Any]] = []
        self._records: list[list[dict[str, Any]]] = []   # per stage, for the paired comparison at the end
        # every stage so far, rewritten (atomically) after each one: a long run cut short keeps its stages
        self.partial_path = out / "anytime_stages.json" if out is not None else None

    def __call__(self, W: np.ndarray, milestone: Any, model_diag: dict[str, float] | None = None) -> None:
        result = run_protocol(self.data, [FixedEmbedder(self.name, W)], self.ks, self.repeats, self.seed,
                              self.tsne_params, self.fps_start, self.grid, self.features_kind)
        diag = {**self._diagnostics(W, model_diag), "map_unseen_reference": result["unseen_reference"][self.name]}
        self._add(milestone.step, milestone.images_seen, milestone.elapsed, milestone.model_version, False,
                  result["summary"], diag)
        self._records.append(result["records"])
        last = self.stages[-1]
        for selector in ("fps", "random"):
            log.info("stage at %.1f min / %.2f kimg: %s + %s accuracy %s", last["minutes"], last["kimg"], self.name,
                     selector, {r["scope"][:6] + f"@{r['k']}": round(r["accuracy_mean"], 3)
                                for r in last["summary"] if r["method"].endswith(selector)})
        log.info("stage diagnostics %s", {k: round(v, 4) for k, v in last["diagnostics"].items()})
        if self.partial_path is not None:
            atomic_write_text(self.partial_path, json.dumps({"embedding": self.name, "stages": self.stages},
                                                            indent=1, default=float))

    def _diagnostics(self, W: np.ndarray, model_diag: dict[str, float] | None) -> dict[str, float]:
        from ss_stylegan.evaluation.diagnostics import embedding_diagnostics

        return {**embedding_diagnostics(W, self.data.labels, self.data.groups), **(model_diag or {})}

    def _add(self, step: int, images_seen: int, elapsed: float, version: str, final: bool,
             summary: list[dict[str, Any]], diagnostics: dict[str, float]) -> None:
        self.stages.append({"step": int(step), "kimg": images_seen / 1000.0, "minutes": elapsed / 60.0,
                            "model_version": version, "final": final, "diagnostics": diagnostics,
                            "summary": [r for r in summary if r["method"].startswith(self.name + " + ")]})

    def finish(self, gan: GANEmbedder, result: dict[str, Any], baseline: Embedder) -> dict[str, Any]:
        """All stages plus the baseline rows of the main run (``result`` of :func:`run_protocol`) and the
        diagnostics of the ``baseline`` embedding (its repeat-0 vectors)."""
        from ss_stylegan.evaluation.diagnostics import embedding_diagnostics

        if gan.trained:
            t = gan.trained[-1]
            diag = self._diagnostics(gan.embed(self.data.images, 0), gan.final_diagnostics)
            diag["map_unseen_reference"] = result["unseen_reference"].get(self.name, math.nan)
            self._add(t["steps"], t["images_seen"], t["train_seconds"], gan.model_versions[-1], True,
                      result["summary"], diag)
            self._records.append([r for r in result["records"] if r["embedding"] == self.name])
        baseline_records = [r for r in result["records"] if r["embedding"] == baseline.name]
        for stage, records in zip(self.stages, self._records):
            stage["paired"] = paired_differences(records, baseline_records)
        rows = [r for r in result["summary"] if r["method"].startswith(baseline.name + " + ")]
        diag = embedding_diagnostics(baseline.embed(self.data.images, 0), self.data.labels, self.data.groups)
        diag["map_unseen_reference"] = result["unseen_reference"].get(baseline.name, math.nan)
        return {"embedding": self.name, "stages": self.stages, "baseline": rows,
                "baseline_diagnostics": {baseline.name: diag}}


def anytime_markdown(anytime: dict[str, Any], ks: Sequence[int]) -> str:
    """Accuracy of W at every training stage against the pixel baseline of the same run, per scope."""
    name = anytime["embedding"]
    lines = ["# Anytime evaluation: accuracy of the map at each training stage", ""]
    for scope in ("all_unlabelled", "unseen_groups"):
        what = "all unlabelled slices" if scope == "all_unlabelled" else "unseen scans only"
        head = " | ".join(f"{sel} k={k}" for sel in ("fps", "random") for k in ks)
        lines += [f"## Accuracy on {what} (mean over repeats)", "",
                  f"| map | minutes | kimg | {head} |", "| --- | --- | --- | " + " | ".join(["---"] * 2 * len(ks)) + " |"]
        groups = sorted({r["method"].rsplit(" + ", 1)[0] for r in anytime["baseline"]})
        for emb in groups:
            cells = [_mean_cell(anytime["baseline"], f"{emb} + {sel}", k, scope) for sel in ("fps", "random") for k in ks]
            lines.append(f"| {emb} (baseline) | – | – | " + " | ".join(cells) + " |")
            cells = [_mean_cell(anytime["baseline"], f"{emb} + {sel}", k, scope, "majority_accuracy")
                     for sel in ("fps", "random") for k in ks]
            lines.append(f"| chance: majority class of the {emb} picks' labels | – | – | "
                         + " | ".join(cells) + " |")
        for st in anytime["stages"]:
            cells = [_mean_cell(st["summary"], f"{name} + {sel}", k, scope) for sel in ("fps", "random") for k in ks]
            tag = " (final)" if st["final"] else ""
            lines.append(f"| {name}{tag} | {st['minutes']:.1f} | {st['kimg']:.2f} | " + " | ".join(cells) + " |")
        lines.append("")
        paired = [dict(r, method=f"{r['method']}@{i}") for i, st in enumerate(anytime["stages"])
                  for r in st.get("paired", [])]
        labels = [(f"{name} + {sel}@{i}", f"{name} + {sel}, {st['kimg']:.2f} kimg")
                  for i, st in enumerate(anytime["stages"]) if st.get("paired") for sel in ("fps", "random")]
        lines += _paired_section(paired, ks, labels, scope)
    keys = ("same_group_at_10", "cross_group_1nn", "linear_probe", "map_unseen_reference", "w_recovery_ema",
            "w_recovery_raw")
    lines += ["## Diagnostics of the vectors and the map", "",
              "same-group@10: share of a slice's 10 nearest neighbours from its own scan; cross-group 1-NN: class "
              "agreement with the nearest slice of another scan; linear probe: balanced accuracy of a logistic "
              "regression across scans (group 5-fold); map unseen reference: the same cross-scan 1-NN accuracy in the "
              "2-D map (mean over repeats), what the unseen-scan scope gives with every other scan labelled; "
              "w recovery: |mu(G(w)) - w|^2 / var(w) (1 = chance).", "",
              "| embedding | minutes | kimg | " + " | ".join(k.replace("_", " ") for k in keys) + " |",
              "| --- | --- | --- | " + " | ".join("---" for _ in keys) + " |"]
    for emb, diag in anytime.get("baseline_diagnostics", {}).items():
        lines.append(f"| {emb} (baseline) | – | – | " + " | ".join(_diag_cell(diag, k) for k in keys) + " |")
    for st in anytime["stages"]:
        lines.append(f"| {name} | {st['minutes']:.1f} | {st['kimg']:.2f} | "
                     + " | ".join(_diag_cell(st.get("diagnostics", {}), k) for k in keys) + " |")
    lines.append("")
    return "\n".join(lines)


def write_anytime(anytime: dict[str, Any], meta: dict[str, Any], out: Path) -> dict[str, Path]:
    """``anytime.json``, ``anytime.md`` and ``anytime_accuracy.png`` of an anytime evaluation."""
    from ss_stylegan.evaluation.plots import plot_anytime

    payload = {"meta": meta, **anytime}
    return {"anytime_json": atomic_write_text(out / "anytime.json", json.dumps(_json_safe(payload), indent=1)),
            "anytime_md": atomic_write_text(out / "anytime.md", anytime_markdown(anytime, meta["ks"])),
            "anytime_png": plot_anytime(anytime, out / "anytime_accuracy.png")}
