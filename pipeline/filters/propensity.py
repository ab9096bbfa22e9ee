"""Propensity scoring and inverse-propensity weights, in the spirit of DebCSE.

DebCSE (Miao et al. 2023, "DebCSE: Rethinking Unsupervised Contrastive Sentence Embedding Learning in
the Debiasing Perspective") observes that sentence-pair data lets a model tell positives from negatives
by surface cues alone, and reweights pairs by inverse propensity. Here the propensity of a pair is
P(label = positive | surface features), fitted by cross-fitted logistic regression, and the weight is
1/p for a positive and 1/(1-p) for a negative, with p clipped to [clip, 1 - clip] and the weights
self-normalised to mean 1 within each label. Weighted this way, a surface feature stops predicting the
label: its weighted AUC moves toward 0.5 (where the two labels' feature ranges overlap at all).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.filters.surface import Scorer, surface_scores
from pipeline.filters.words import Words

FEATURES = ("ratio", "token_set_ratio", "word_levenshtein", "length_ratio")
_SCORED: tuple[Scorer, Scorer] = ("token_set_ratio", "word_levenshtein")  # FEATURES[1:3], from rapidfuzz


def surface_features(
    anchors: list[str], candidates: list[str], ratio: np.ndarray | None = None, words: Words | None = None
) -> np.ndarray:
    """(N, 4) features of each pair: char ratio, word-set overlap, word Levenshtein, length ratio (short/long).

    ``ratio``: the pairs' ``ratio`` scores when already computed (the stage has them as a column);
    ``words``: the texts already split (the stage splits them once).
    """
    la = np.fromiter(map(len, anchors), dtype=np.float32, count=len(anchors))  # (N,)
    lc = np.fromiter(map(len, candidates), dtype=np.float32, count=len(candidates))  # (N,)
    length_ratio = np.minimum(la, lc) / np.maximum(np.maximum(la, lc), 1)  # (N,)
    first = surface_scores(anchors, candidates, "ratio") if ratio is None else np.asarray(ratio, dtype=np.float32)
    cols = [first, *(surface_scores(anchors, candidates, s, words) for s in _SCORED)]
    return np.column_stack([*cols, length_ratio]).astype(np.float32)


def _model():
    # Weak regularisation on standardised features: a shrunk propensity under-corrects the bias
    # (C=1 left a weighted AUC of 0.40 where 0.5 was due, on the test's Gaussian example).
    return make_pipeline(StandardScaler(), LogisticRegression(C=100.0, max_iter=1000))


def cross_fit(features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """(N,) P(label=1 | features), each row's from a model fitted on the other folds (the label mean everywhere
    when a label has fewer rows than two folds need)."""
    labels = np.asarray(labels).astype(int)
    if set(np.unique(labels)) != {0, 1}:
        raise ValueError(
            f"propensity: expected labels 0 (negative) and 1 (positive), got {sorted(set(labels.tolist()))}"
        )
    n_folds = int(min(folds, np.bincount(labels).min()))
    p = np.empty(len(labels), dtype=np.float64)
    if n_folds < 2:  # too few of one label to cross-fit: no evidence of bias, uniform weights
        p[:] = labels.mean()
        return p
    for train, test in StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(features, labels):
        p[test] = _model().fit(features[train], labels[train]).predict_proba(features[test])[:, 1]
    return p


def fit_all(features: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A model of P(label=1 | features) fitted on every row given: a callable (M, F) -> (M,), for rows it never
    saw (the rows outside a fitting sample). Constant where :func:`cross_fit` would be."""
    labels = np.asarray(labels).astype(int)
    if np.bincount(labels, minlength=2).min() < 2:
        mean = float(labels.mean())
        return lambda x: np.full(len(x), mean)
    model = _model().fit(features, labels)
    return lambda x: model.predict_proba(x)[:, 1] if len(x) else np.zeros(0)


def inverse_weights(p: np.ndarray, labels: np.ndarray, clip: float) -> tuple[np.ndarray, np.ndarray]:
    """(clipped p, inverse-propensity weight before normalising): 1/p for a positive, 1/(1-p) for a negative."""
    p = np.clip(p, clip, 1 - clip)
    return p, np.where(np.asarray(labels) == 1, 1 / p, 1 / (1 - p))


def propensity_weights(
    features: np.ndarray, labels: np.ndarray, clip: float = 0.05, folds: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(propensity P(label=1 | features), inverse-propensity weight) per row; both shape (N,).

    Cross-fitted: each row's propensity comes from a model fitted on the other folds.
    """
    labels = np.asarray(labels).astype(int)
    p, w = inverse_weights(cross_fit(features, labels, folds, seed), labels, clip)
    for value in (0, 1):  # self-normalise within each label
        w[labels == value] /= w[labels == value].mean()
    return p.astype(np.float32), w.astype(np.float32)


def weighted_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """AUC of ``scores`` for telling label 1 from label 0 (0.5: the score says nothing about the label).

    >>> weighted_auc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([1, 1, 0, 0]))
    1.0
    """
    return float(roc_auc_score(labels, scores, sample_weight=weights))
