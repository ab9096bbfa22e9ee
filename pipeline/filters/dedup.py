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


# ASCII characters the slow path drops (not \w, not whitespace), deleted by bytes.translate (a C table).
_ASCII_DROP = bytes(c for c in range(128) if not chr(c).isalnum() and not chr(c).isspace() and chr(c) != "_")


def normalise(text: str) -> str:
    """Lower case, NFKC, punctuation dropped, whitespace collapsed.

    >>> normalise("  A Dog,  on a   SOFA! ")
    'a dog on a sofa'
    """
    if text.isascii():  # fast path, same result: NFKC changes no ASCII text
        return b" ".join(text.lower().encode("ascii").translate(None, _ASCII_DROP).split()).decode("ascii")
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACE.sub(" ", _PUNCT.sub("", text)).strip()


def repeated(keys: list[str]) -> np.ndarray:
    """True where a key repeats an earlier one.

    >>> repeated(["a", "b", "a"]).tolist()
    [False, False, True]
    """
    seen: set[str] = set()
    out = np.zeros(len(keys), dtype=bool)
    for i, k in enumerate(keys):
        out[i] = k in seen
        seen.add(k)
    return out


def exact_duplicates(texts: list[str]) -> np.ndarray:
    """True where a text repeats an earlier one after :func:`normalise`.

    >>> exact_duplicates(["A dog.", "a dog", "a cat"]).tolist()
    [False, True, False]
    """
    return repeated([normalise(t) for t in texts])


def near_duplicate_scores(norm: list[str], groups: list[str]) -> np.ndarray:
    """Highest rapidfuzz ``ratio`` (0-1) of each text (already :func:`normalise`-d) to an earlier text of its
    group; 0 for the first.

    All within-group pairs (i < j) are scored in one ``cpdist`` call (one call per group costs more in
    thread start-up than in scoring).

    >>> [round(float(x), 2) for x in near_duplicate_scores(["a big red car", "a big red cars", "a blue car"], ["g"] * 3)]
    [0.0, 0.96, 0.7]
    """
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    first, later = [], []
    for rows in by_group.values():
        for a in range(len(rows)):
            for b in range(a + 1, len(rows)):
                first.append(rows[a])
                later.append(rows[b])
    out = np.zeros(len(norm), dtype=np.float32)
    if not first:
        return out
    sim = process.cpdist([norm[i] for i in first], [norm[j] for j in later], scorer=fuzz.ratio, dtype=np.float32,
                         workers=-1) / 100.0  # (P,) one score per within-group pair
    np.maximum.at(out, np.asarray(later), sim)
    return out


def near_duplicates(texts: list[str], groups: list[str], threshold: float) -> np.ndarray:
    """True where a text is within ``threshold`` (0-1 ``ratio``) of an earlier text of the same group.

    >>> near_duplicates(["a big red car", "a big red cars", "a blue car"], ["g", "g", "g"], 0.95).tolist()
    [False, True, False]
    """
    return near_duplicate_scores([normalise(t) for t in texts], groups) >= threshold
