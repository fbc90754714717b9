"""Classification metrics on integer class indices ``0 .. C-1``.

Binary metrics (sensitivity, specificity, precision) treat class ``positive`` (default 1) as the
positive class. ``macro_*`` average the one-vs-rest value over the classes present in
``y_true``. A metric whose denominator is zero (e.g. precision when nothing is predicted
positive, AUC when only one class is present) is ``nan``, never a silent 0 or 1.
AUC is rank based (Mann-Whitney U with average ranks for ties), equal to the area under the ROC
curve of the score.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import rankdata


class MetricError(ValueError):
    """Mismatched or malformed inputs to a metric."""


def _labels(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.ndim != 1 or t.shape != p.shape:
        raise MetricError(f"y_true and y_pred must be 1-D of equal length, got {t.shape} and {p.shape}")
    if t.size and (not np.issubdtype(t.dtype, np.integer) or not np.issubdtype(p.dtype, np.integer)):
        raise MetricError("labels must be integer class indices 0..C-1")
    return t.astype(np.int64), p.astype(np.int64)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int | None = None) -> np.ndarray:
    """``[C, C]`` counts; row = true class, column = predicted class."""
    t, p = _labels(y_true, y_pred)
    if n_classes is None:
        n_classes = int(max(t.max(initial=-1), p.max(initial=-1)) + 1)
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise MetricError(f"labels must lie in [0, {n_classes})")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def accuracy(y_true: Any, y_pred: Any) -> float:
    t, p = _labels(y_true, y_pred)
    return _ratio((t == p).sum(), t.size)


def recall_per_class(y_true: Any, y_pred: Any, n_classes: int | None = None) -> np.ndarray:
    """``[C]`` recall of each class (nan for a class absent from ``y_true``)."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    return np.array([_ratio(cm[c, c], cm[c].sum()) for c in range(cm.shape[0])])


def balanced_accuracy(y_true: Any, y_pred: Any, n_classes: int | None = None) -> float:
    """Mean recall over the classes present in ``y_true``."""
    r = recall_per_class(y_true, y_pred, n_classes)
    r = r[~np.isnan(r)]
    return float(r.mean()) if r.size else math.nan


def sensitivity(y_true: Any, y_pred: Any, positive: int = 1) -> float:
    """Recall of the positive class: TP / (TP + FN)."""
    t, p = _labels(y_true, y_pred)
    return _ratio(((t == positive) & (p == positive)).sum(), (t == positive).sum())


recall = sensitivity


def specificity(y_true: Any, y_pred: Any, positive: int = 1) -> float:
    """TN / (TN + FP)."""
    t, p = _labels(y_true, y_pred)
    return _ratio(((t != positive) & (p != positive)).sum(), (t != positive).sum())


def precision(y_true: Any, y_pred: Any, positive: int = 1) -> float:
    """TP / (TP + FP)."""
    t, p = _labels(y_true, y_pred)
    return _ratio(((t == positive) & (p == positive)).sum(), (p == positive).sum())


def roc_auc(y_true_binary: Any, score: Any) -> float:
    """Binary AUC of ``score`` (higher = more positive); ``y_true_binary`` in {0, 1} or bool."""
    y = np.asarray(y_true_binary).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    if y.ndim != 1 or y.shape != s.shape:
        raise MetricError(f"labels and scores must be 1-D of equal length, got {y.shape} and {s.shape}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def macro_auc(y_true: Any, scores: Any) -> float:
    """One-vs-rest AUC averaged over classes present in ``y_true``; ``scores`` is ``[N, C]``."""
    t = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != t.shape[0]:
        raise MetricError(f"scores must be [N, C] with N = len(y_true), got {s.shape}")
    values = [roc_auc(t == c, s[:, c]) for c in range(s.shape[1])]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _macro(fn: Any, t: np.ndarray, p: np.ndarray, n_classes: int) -> float:
    values = [fn((t == c).astype(np.int64), (p == c).astype(np.int64), 1) for c in range(n_classes) if (t == c).any()]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def classification_report(
    y_true: Any, y_pred: Any, scores: Any | None = None, n_classes: int | None = None
) -> dict[str, Any]:
    """Every metric of this module in one JSON-serialisable dict.

    Args:
        y_true: ``[N]`` true class indices.
        y_pred: ``[N]`` predicted class indices.
        scores: optional ``[N, C]`` per-class scores (for AUC).
        n_classes: C; inferred from the labels when omitted.

    For two classes the binary metrics use class 1 as positive; for more, the macro versions
    are reported under the same names with a ``macro_`` prefix.
    """
    t, p = _labels(y_true, y_pred)
    if n_classes is None:
        n_classes = int(max(t.max(initial=-1), p.max(initial=-1), 1) + 1)
    report: dict[str, Any] = {
        "n": int(t.size),
        "accuracy": accuracy(t, p),
        "balanced_accuracy": balanced_accuracy(t, p, n_classes),
        "confusion_matrix": confusion_matrix(t, p, n_classes).tolist(),
    }
    if n_classes == 2:
        report.update(
            sensitivity=sensitivity(t, p), specificity=specificity(t, p), precision=precision(t, p)
        )
        if scores is not None:
            report["auc"] = roc_auc(t == 1, np.asarray(scores)[:, 1])
    else:
        report.update(
            macro_sensitivity=_macro(sensitivity, t, p, n_classes),
            macro_specificity=_macro(specificity, t, p, n_classes),
            macro_precision=_macro(precision, t, p, n_classes),
        )
        if scores is not None:
            report["macro_auc"] = macro_auc(t, scores)
    return report
