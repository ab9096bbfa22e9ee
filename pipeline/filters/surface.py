"""Surface similarity (rapidfuzz) between anchors and candidates, vectorised over pairs.

Scorers, all scaled to [0, 1]: ``ratio`` (character Indel similarity), ``token_sort_ratio`` (words
sorted first: a swap scores 1), ``token_set_ratio`` (shared word set), ``word_levenshtein``
(normalised Levenshtein over word sequences: one word replaced in six scores 5/6).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
from rapidfuzz import fuzz, process
from rapidfuzz.distance import Levenshtein

from pipeline.filters.words import Words

Scorer = Literal["ratio", "token_sort_ratio", "token_set_ratio", "word_levenshtein"]

# name -> (rapidfuzz scorer, processor, divisor to reach [0, 1])
SCORERS: dict[str, tuple[Callable, Callable | None, float]] = {
    "ratio": (fuzz.ratio, None, 100.0),
    "token_sort_ratio": (fuzz.token_sort_ratio, None, 100.0),
    "token_set_ratio": (fuzz.token_set_ratio, None, 100.0),
    "word_levenshtein": (Levenshtein.normalized_similarity, str.split, 1.0),
}


def surface_scores(
    anchors: list[str], candidates: list[str], scorer: Scorer = "ratio", words: Words | None = None
) -> np.ndarray:
    """Score of each (anchor, candidate) pair with ``scorer``, in [0, 1]; shape (N,). ``words``: the texts
    already split (:class:`~pipeline.filters.words.Words` of a superset of them), used by ``word_levenshtein``.

    >>> surface_scores(["a red car"], ["a car red"], "token_sort_ratio").tolist()
    [1.0]
    """
    if len(anchors) != len(candidates):
        raise ValueError(
            f"surface_scores: expected as many candidates as anchors, got {len(candidates)} and {len(anchors)}"
        )
    if not anchors:
        return np.zeros(0, dtype=np.float32)
    fn, processor, divisor = SCORERS[scorer]
    if scorer == "word_levenshtein":  # same scores, C speed: each distinct word becomes one code point
        anchors, candidates, processor = *_word_codes(anchors, candidates, words), None
    scores = process.cpdist(anchors, candidates, scorer=fn, processor=processor, dtype=np.float32, workers=-1)  # (N,)
    return np.round(scores / divisor, 4)


def surface_similarity(anchors: list[str], candidates: list[str]) -> np.ndarray:
    """``fuzz.ratio`` of each (anchor, candidate) pair, scaled to [0, 1]; shape (N,) (the ``surface_sim`` column).

    >>> surface_similarity(["a red car"], ["a red car"]).tolist()
    [1.0]
    """
    return surface_scores(anchors, candidates, "ratio")


def in_band(scores: np.ndarray, low: float, high: float) -> np.ndarray:
    """Mask of scores inside [low, high] (a negative must stay close; a paraphrase must move away).

    >>> in_band(np.array([0.2, 0.5, 0.9]), 0.4, 0.8).tolist()
    [False, True, False]
    """
    return (scores >= low) & (scores <= high)


def _word_codes(anchors: list[str], candidates: list[str], words: Words | None = None) -> tuple[list[str], list[str]]:
    """Each text as a string of one character per word (:attr:`Words.codes`), so a character Levenshtein on the
    codes is the word Levenshtein on the texts. ``words``: the texts already split, when the caller has them."""
    words = Words(list(dict.fromkeys([*anchors, *candidates]))) if words is None else words
    if not words.fits_codes:  # more distinct words than code points (millions of texts): number each pair's own
        pairs = [_pair_codes(a, c) for a, c in zip(anchors, candidates)]
        return [a for a, _ in pairs], [c for _, c in pairs]
    codes, where = words.codes, words.index
    return [codes[where[t]] for t in anchors], [codes[where[t]] for t in candidates]


def _pair_codes(a: str, b: str) -> tuple[str, str]:
    """Two texts as code strings over their own words (the same word, the same code): the word Levenshtein of
    the texts, whatever the size of the whole vocabulary."""
    local: dict[str, str] = {}

    def code(text: str) -> str:
        return "".join(local.setdefault(w, chr(0x10000 + len(local))) for w in text.replace("\x00", " ").split())

    return code(a), code(b)
