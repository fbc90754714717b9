"""Metrics against hand-computed values and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from ss_stylegan.evaluation import metrics as m


def test_binary_metrics_by_hand() -> None:
    t = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p = np.array([1, 0, 1, 0, 1, 0, 0, 1])   # TP 3, FN 1, TN 3, FP 1
    assert m.accuracy(t, p) == 6 / 8
    assert m.sensitivity(t, p) == 3 / 4
    assert m.specificity(t, p) == 3 / 4
    assert m.precision(t, p) == 3 / 4
    assert m.confusion_matrix(t, p).tolist() == [[3, 1], [1, 3]]
    assert math.isnan(m.precision(t, np.zeros(8, dtype=int)))   # nothing predicted positive


def test_auc_with_ties_by_hand() -> None:
    # positives 0.8, 0.5; negatives 0.5, 0.2: pairs won 1 + 1 + 0.5 + 1 = 3.5 of 4
    assert m.roc_auc([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.2]) == 3.5 / 4
    assert math.isnan(m.roc_auc([1, 1], [0.1, 0.2]))


def test_against_sklearn_multiclass() -> None:
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, 300)
    p = np.where(rng.random(300) < 0.6, t, rng.integers(0, 4, 300))
    s = rng.random((300, 4)) + np.eye(4)[t] * 0.5
    s /= s.sum(axis=1, keepdims=True)
    assert m.balanced_accuracy(t, p) == pytest.approx(skm.balanced_accuracy_score(t, p))
    np.testing.assert_array_equal(m.confusion_matrix(t, p, 4), skm.confusion_matrix(t, p))
    assert m.macro_auc(t, s) == pytest.approx(skm.roc_auc_score(t, s, multi_class="ovr", average="macro"))
    report = m.classification_report(t, p, s, 4)
    assert report["macro_precision"] == pytest.approx(skm.precision_score(t, p, average="macro"))
    assert report["macro_sensitivity"] == pytest.approx(skm.recall_score(t, p, average="macro"))
    b = rng.integers(0, 2, 200)
    sb = rng.random(200) + b * 0.3
    assert m.roc_auc(b, sb) == pytest.approx(skm.roc_auc_score(b, sb))


def test_bad_input() -> None:
    with pytest.raises(m.MetricError):
        m.accuracy([0, 1], [0])
    with pytest.raises(m.MetricError):
        m.accuracy([0.5, 1.0], [0.0, 1.0])
