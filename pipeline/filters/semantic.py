"""Semantic similarity (cosine of embeddings; :mod:`pipeline.filters.cache` keeps them on disk) and the
hard-negative knobs of sentence-transformers' ``mine_hard_negatives`` applied to given negatives.

Knobs (each off when None), for a negative n of anchor a with positive p, cosine s:
- ``max_score`` / ``min_score``: drop n when s(a, n) > max_score / s(a, n) < min_score;
- ``absolute_margin``: drop n when s(a, n) > s(a, p) - margin;
- ``relative_margin``: drop n when s(a, n) > s(a, p) - |s(a, p)| * margin;
- ``false_negative``: drop n when s(a, n) >= threshold (nearly the same meaning: not a negative).
Typed caption negatives are often *closer* to the caption than its paraphrase is (that is what makes
them hard), so the margins are off by default and only the false-negative guard is on.
"""

from __future__ import annotations

import numpy as np

from pipeline.records import Reason


def cosine_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise cosine of x [N, D] and y [N, D]; shape (N,).

    >>> cosine_rows(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[2.0, 0.0], [-1.0, -1.0]])).round(4).tolist()
    [1.0, -1.0]
    """
    num = np.einsum("ij,ij->i", x, y)  # no [N, D] temporaries
    den = np.sqrt(np.einsum("ij,ij->i", x, x) * np.einsum("ij,ij->i", y, y))
    return (num / np.maximum(den, 1e-12)).astype(np.float32)


def semantic_reasons(
    s_neg: np.ndarray,
    s_pos: np.ndarray | None,
    *,
    false_negative: float | np.ndarray | None = 0.95,
    max_score: float | None = None,
    min_score: float | None = None,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
) -> np.ndarray:
    """The first rule each row fails ('' when kept), in the order of the module docstring; shape (N,).

    ``s_pos`` may hold NaN (no positive): margin rules then keep the row. ``false_negative`` may be one
    threshold per row (``inf`` exempts a row from the guard; it still faces the other rules).

    >>> semantic_reasons(np.array([0.97, 0.5, 0.2]), None, min_score=0.3).astype(str).tolist()
    ['false_negative', '', 'below_min_score']
    >>> semantic_reasons(np.array([0.97, 0.97]), None, false_negative=np.array([0.95, np.inf])).astype(str).tolist()
    ['false_negative', '']
    """
    out = np.full(len(s_neg), "", dtype=object)
    pos = np.full(len(s_neg), np.nan) if s_pos is None else np.asarray(s_pos, dtype=np.float64)
    rules = [
        (Reason.false_negative, None if false_negative is None else s_neg >= false_negative),
        (Reason.above_max_score, None if max_score is None else s_neg > max_score),
        (Reason.below_min_score, None if min_score is None else s_neg < min_score),
        (Reason.absolute_margin, None if absolute_margin is None else s_neg > pos - absolute_margin),
        (Reason.relative_margin, None if relative_margin is None else s_neg > pos - np.abs(pos) * relative_margin),
    ]
    for reason, failed in rules:  # NaN comparisons are False: a row without positive passes the margins
        if failed is not None:
            out[(out == "") & failed] = reason
    return out
