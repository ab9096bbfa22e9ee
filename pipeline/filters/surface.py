"""Surface similarity (rapidfuzz) between anchors and candidates, vectorised over pairs."""

from __future__ import annotations

import numpy as np
from rapidfuzz import fuzz, process


def surface_similarity(anchors: list[str], candidates: list[str]) -> np.ndarray:
    """``fuzz.ratio`` of each (anchor, candidate) pair, scaled to [0, 1]; shape (N,).

    >>> surface_similarity(["a red car"], ["a red car"]).tolist()
    [1.0]
    """
    if not anchors:
        return np.zeros(0, dtype=np.float32)
    scores = process.cpdist(anchors, candidates, scorer=fuzz.ratio, dtype=np.float32, workers=-1)  # (N,)
    return np.round(scores / 100.0, 4)
