"""Exact and near-duplicate detection: masks that keep the first occurrence.

Exact: texts equal after normalisation (case, whitespace, punctuation). Near: rapidfuzz ``ratio`` of two
normalised texts at or above a threshold, compared only within a group (the rows of one caption) so the
cost stays linear in the number of groups.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
from rapidfuzz import fuzz, process

_PUNCT = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower case, NFKC, punctuation dropped, whitespace collapsed.

    >>> normalise("  A Dog,  on a   SOFA! ")
    'a dog on a sofa'
    """
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACE.sub(" ", _PUNCT.sub("", text)).strip()


def exact_duplicates(texts: list[str]) -> np.ndarray:
    """True where a text repeats an earlier one after :func:`normalise`.

    >>> exact_duplicates(["A dog.", "a dog", "a cat"]).tolist()
    [False, True, False]
    """
    seen: set[str] = set()
    out = np.zeros(len(texts), dtype=bool)
    for i, t in enumerate(texts):
        key = normalise(t)
        out[i] = key in seen
        seen.add(key)
    return out


def near_duplicates(texts: list[str], groups: list[str], threshold: float) -> np.ndarray:
    """True where a text is within ``threshold`` (0-1 ``ratio``) of an earlier text of the same group.

    >>> near_duplicates(["a big red car", "a big red cars", "a blue car"], ["g", "g", "g"], 0.95).tolist()
    [False, True, False]
    """
    out = np.zeros(len(texts), dtype=bool)
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    for rows in by_group.values():
        if len(rows) < 2:
            continue
        norm = [normalise(texts[i]) for i in rows]
        sim = process.cdist(norm, norm, scorer=fuzz.ratio, dtype=np.float32, workers=-1) / 100.0  # (n, n)
        earlier = np.tril(sim >= threshold, k=-1)  # row j is a near-dup of some earlier i < j
        out[np.array(rows)[earlier.any(axis=1)]] = True
    return out
