"""1-NN classifier: exact on separable data, any number of classes, scores usable for AUC."""

from __future__ import annotations

import numpy as np
import pytest

from ss_stylegan.classification.nearest import (
    ClassificationError,
    NearestLabelIndex,
    NearestNeighbourClassifier,
)
from ss_stylegan.evaluation.metrics import macro_auc, roc_auc


def _blobs(n_classes: int, per: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 50
    X = np.concatenate([c + rng.normal(size=(per, dim)) for c in centres])
    return X, np.repeat(np.arange(n_classes), per)


@pytest.mark.parametrize("n_classes,dim", [(2, 2), (3, 2), (7, 2), (4, 32)])
def test_exact_on_separable_data(n_classes: int, dim: int) -> None:
    X, y = _blobs(n_classes, 30, dim)
    labelled = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(n_classes)])
    clf = NearestNeighbourClassifier().fit(X[labelled], y[labelled])
    pred = clf.predict(X)
    assert (pred.labels == y).all()
    assert pred.scores.shape == (len(y), n_classes)
    np.testing.assert_allclose(pred.scores.sum(axis=1), 1.0)
    # the neighbour really is the nearest labelled point, at the reported distance
    d = np.linalg.norm(X[:, None] - X[labelled][None], axis=2)
    np.testing.assert_array_equal(pred.neighbour, d.argmin(axis=1))
    np.testing.assert_allclose(pred.distance, d.min(axis=1))
    if n_classes == 2:
        assert roc_auc(y == 1, pred.scores[:, 1]) == 1.0
    else:
        assert macro_auc(y, pred.scores) == 1.0


def test_string_labels_and_binary_score_formula() -> None:
    clf = NearestNeighbourClassifier().fit(np.array([[0.0], [4.0]]), ["normal", "tumor"])
    pred = clf.predict(np.array([[1.0], [4.0], [2.0]]))
    assert pred.labels.tolist() == ["normal", "tumor", "normal"]      # exact tie -> lowest class
    np.testing.assert_allclose(pred.scores[:, 1], [1 / 4, 1.0, 0.5])   # d0 / (d0 + d1)


def test_single_class_and_no_labels() -> None:
    pred = NearestNeighbourClassifier().fit(np.zeros((2, 2)), [3, 3]).predict(np.ones((4, 2)))
    assert pred.labels.tolist() == [3, 3, 3, 3] and (pred.score == 1.0).all()
    with pytest.raises(ClassificationError, match="no labelled"):
        NearestNeighbourClassifier().fit(np.zeros((0, 2)), [])
    with pytest.raises(ClassificationError, match="not fitted"):
        NearestNeighbourClassifier().predict(np.zeros((1, 2)))
    with pytest.raises(ClassificationError, match="dimensions"):
        NearestNeighbourClassifier().fit(np.zeros((2, 2)), [0, 1]).predict(np.zeros((1, 3)))


@pytest.mark.parametrize("rebuild_after", [1, 5, 10_000])
def test_label_index_answers_as_a_fresh_fit_after_every_change(rebuild_after: int) -> None:
    """Labels set, changed and removed one by one: every answer equals a classifier fitted from scratch on the
    labelled points at that moment (labels, scores, distances, and the neighbour as a map row)."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(600, 2)) * 10
    index = NearestLabelIndex(X, rebuild_after=rebuild_after)
    labels: dict[int, str] = {}
    for step in range(120):
        rows = rng.integers(0, 600, rng.integers(1, 4))
        if rng.random() < 0.7 or len(labels) < 3:
            classes = rng.choice(["lesion", "normal", "other"], len(rows))
            index.set_labels(rows, classes)
            labels.update(zip(rows.tolist(), classes.tolist()))
        else:
            index.remove_labels(rows)
            for r in rows.tolist():
                labels.pop(r, None)
        if not labels:
            continue
        query = np.concatenate([rng.normal(size=(20, 2)) * 12, X[rng.integers(0, 600, 5)]])
        got = index.predict(query)
        keys = sorted(labels)
        want = NearestNeighbourClassifier().fit(X[keys], [labels[k] for k in keys]).predict(query)
        assert index.n_labelled == len(labels) and list(index.classes_) == sorted(set(labels.values()))
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_array_equal(got.distance, want.distance)
        np.testing.assert_array_equal(got.scores, want.scores)
        np.testing.assert_array_equal(got.neighbour, np.asarray(keys)[want.neighbour])
    with pytest.raises(ClassificationError, match="rows"):
        index.set_labels([600], ["normal"])
    with pytest.raises(ClassificationError, match="one label per row"):
        index.set_labels([1, 2], ["normal"])
    index.remove_labels(np.arange(600))
    with pytest.raises(ClassificationError, match="no labelled points"):
        index.predict(X[:3])
