"""Logistic regression with balanced class weights on the whole embedding: a linear probe as the classifier.

A rare class weighs as much as a common one, so a handful of lesion labels is not drowned by the normals.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression


def logistic_scores(x: np.ndarray, labelled: np.ndarray, y: np.ndarray, n_classes: int,
                    random_state: int = 0) -> np.ndarray:
    """``[N, n_classes]`` class probabilities of every row of ``x`` (a class without a label scores 0)."""
    model = LogisticRegression(class_weight="balanced", C=1.0, max_iter=2000, random_state=random_state)
    model.fit(x[labelled], y)
    scores = np.zeros((x.shape[0], n_classes))
    scores[:, model.classes_] = model.predict_proba(x)
    return scores
