"""Study-level scoring: is each scan positive for each class, and how well does a rule say so?

A scan (a group of the data) is truly positive for class ``c`` when any of its slices is labelled ``c``. From
the per-slice predictions of one protocol run (every slice of the data, the labelled ones answering their own
label), a rule decides whether the scan is positive:

- ``majority``: the class of most slices (what a study's answer by slice majority gives);
- ``runs >= m, score >= s``: :func:`ss_stylegan.labelling.findings.study_findings`, positive when a run of
  adjacent slices predicted ``c`` with a score for ``c`` of at least ``s`` reaches ``m`` slices
  (``runs >= 1, score >= 0`` is "any slice predicted ``c``").

Slices of a scan are in their order in the data (the IQ-OTH/NCCD npz keeps each scan's slices in file-number
order). Sensitivity and specificity are counted over the scans of a scope, per class other than the
background, and averaged over those classes (macro).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ss_stylegan.labelling.findings import StudyRule, majority_class, study_findings

MIN_SLICES = (1, 2, 3, 5, 8)
MIN_SCORES = (0.0, 0.6, 0.7, 0.8, 0.9)
STUDY_SCOPES = ("all_scans", "unseen_scans")


def rule_name(rule: StudyRule | None) -> str:
    return "majority" if rule is None else f"runs >= {rule.min_slices}, score >= {rule.min_score:g}"


def study_rules(background: str) -> list[StudyRule | None]:
    """The majority rule, then the runs rule over its grid of settings."""
    return [None] + [StudyRule(background, m, s) for m in MIN_SLICES for s in MIN_SCORES]


def score_studies(y_pred: np.ndarray, scores: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                  labelled: np.ndarray, classes: Sequence[str]) -> dict[str, dict[str, dict[str, float]]]:
    """``{scope: {rule name: {"sensitivity", "specificity", "balanced_accuracy", "n_positive", "n_negative"}}}``.

    Args:
        y_pred: ``[N]`` predicted class index of every slice.
        scores: ``[N, C]`` per-class scores of every slice.
        labels: ``[N]`` true class index.
        groups: ``[N]`` scan of each slice.
        labelled: indices of the labelled slices (a scan with one is not *unseen*).
        classes: class names, the first the background.
    """
    names = np.asarray(classes, dtype=object)
    seen = set(groups[labelled].tolist())
    rules = study_rules(str(classes[0]))
    tally: dict[str, dict[str, np.ndarray]] = {s: {rule_name(r): np.zeros((len(classes), 4)) for r in rules}
                                               for s in STUDY_SCOPES}  # per class: tp, fn, tn, fp
    for group in np.unique(groups):
        idx = np.flatnonzero(groups == group)
        predicted = names[y_pred[idx]].tolist()
        truth = {c for c in range(1, len(classes)) if np.any(labels[idx] == c)}
        per_class = {str(classes[c]): scores[idx, c] for c in range(len(classes))}
        scopes = ["all_scans"] + ([] if group in seen else ["unseen_scans"])
        for rule in rules:
            if rule is None:
                top = majority_class(predicted, [str(c) for c in classes])
                positive = {c for c in range(1, len(classes)) if classes[c] == top}
            else:
                found = study_findings(np.arange(idx.size), predicted, per_class, classes, rule)
                positive = {c for c, f in enumerate(found, 1) if f.positive}
            for c in range(1, len(classes)):
                cell = (0 if c in positive else 1) if c in truth else (3 if c in positive else 2)
                for scope in scopes:
                    tally[scope][rule_name(rule)][c, cell] += 1
    return {scope: {name: _rates(counts[1:]) for name, counts in by_rule.items()} for scope, by_rule in tally.items()}


def _rates(counts: np.ndarray) -> dict[str, float]:
    """Macro sensitivity / specificity over classes from ``[C-1, 4]`` counts (tp, fn, tn, fp)."""
    sens = [tp / (tp + fn) for tp, fn, _, _ in counts if tp + fn]
    spec = [tn / (tn + fp) for _, _, tn, fp in counts if tn + fp]
    s = float(np.mean(sens)) if sens else math.nan
    p = float(np.mean(spec)) if spec else math.nan
    return {"sensitivity": s, "specificity": p, "balanced_accuracy": (s + p) / 2,
            "n_positive": float(counts[:, 0].sum() + counts[:, 1].sum()),
            "n_negative": float(counts[:, 2].sum() + counts[:, 3].sum())}


def summarise_studies(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over repeats per (method, k, scope, rule) of each rate."""
    keys = sorted({(r["method"], r["k"], r["scope"], r["rule"]) for r in records})
    out = []
    for key in keys:
        rows = [r for r in records if (r["method"], r["k"], r["scope"], r["rule"]) == key]
        row: dict[str, Any] = dict(zip(("method", "k", "scope", "rule"), key))
        for m in ("sensitivity", "specificity", "balanced_accuracy"):
            vals = np.array([r[m] for r in rows], dtype=float)
            vals = vals[~np.isnan(vals)]
            row[m] = float(vals.mean()) if vals.size else math.nan
        row["n_positive"], row["n_negative"] = rows[0]["n_positive"], rows[0]["n_negative"]
        row["repeats"] = len(rows)
        out.append(row)
    return out


def best_rule(summary: list[dict[str, Any]], method: str) -> tuple[str, float]:
    """The runs rule with the best balanced accuracy for ``method``, averaged over k and both scopes."""
    means = {}
    for name in {r["rule"] for r in summary if r["method"] == method and r["rule"] != "majority"}:
        vals = [r["balanced_accuracy"] for r in summary if r["method"] == method and r["rule"] == name]
        means[name] = float(np.nanmean(vals))
    best = max(sorted(means), key=lambda n: means[n])
    return best, means[best]


def studies_markdown(summary: list[dict[str, Any]]) -> str:
    """One table per method and scope: rules (rows) by k (sensitivity / specificity / balanced accuracy)."""
    if not summary:
        return ""
    ks = sorted({r["k"] for r in summary})
    lines = ["## Study level: is a scan positive for a class?", "",
             "A scan is truly positive for a class when any of its slices is labelled so. `majority`: the class of "
             "most slices; `runs >= m, score >= s`: a run of m adjacent slices predicted as the class with a score "
             "of at least s. Each cell: sensitivity / specificity / balanced accuracy, mean over repeats; "
             "macro over the classes other than the first (background).", ""]
    for method in sorted({r["method"] for r in summary}):
        best, value = best_rule(summary, method)
        for scope in STUDY_SCOPES:
            rows = [r for r in summary if r["method"] == method and r["scope"] == scope]
            if not rows:
                continue
            n_pos, n_neg = rows[0]["n_positive"], rows[0]["n_negative"]
            lines += [f"### {method}, {scope.replace('_', ' ')} (about {n_pos:.0f} positive and {n_neg:.0f} negative "
                      "class-scans at the first k)", "",
                      "| rule | " + " | ".join(f"k={k}" for k in ks) + " |",
                      "| --- | " + " | ".join("---" for _ in ks) + " |"]
            for name in [rule_name(r) for r in study_rules("background")]:
                cells = []
                for k in ks:
                    row = next((r for r in rows if r["k"] == k and r["rule"] == name), None)
                    cells.append("n/a" if row is None else
                                 f"{row['sensitivity']:.3f} / {row['specificity']:.3f} / "
                                 f"{row['balanced_accuracy']:.3f}")
                mark = "**" if name == best else ""
                lines.append(f"| {mark}{name}{mark} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += [f"Best runs rule for {method} (balanced accuracy averaged over k and both scopes): **{best}** "
                  f"({value:.3f}).", ""]
    return "\n".join(lines)
