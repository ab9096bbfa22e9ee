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

Scorer = Literal["ratio", "token_sort_ratio", "token_set_ratio", "word_levenshtein"]

# name -> (rapidfuzz scorer, processor, divisor to reach [0, 1])
SCORERS: dict[str, tuple[Callable, Callable | None, float]] = {
    "ratio": (fuzz.ratio, None, 100.0),
    "token_sort_ratio": (fuzz.token_sort_ratio, None, 100.0),
    "token_set_ratio": (fuzz.token_set_ratio, None, 100.0),
    "word_levenshtein": (Levenshtein.normalized_similarity, str.split, 1.0),
}


def surface_scores(anchors: list[str], candidates: list[str], scorer: Scorer = "ratio") -> np.ndarray:
    """Score of each (anchor, candidate) pair with ``scorer``, in [0, 1]; shape (N,).

    >>> surface_scores(["a red car"], ["a car red"], "token_sort_ratio").tolist()
    [1.0]
    """
    if len(anchors) != len(candidates):
        raise ValueError(f"surface_scores: expected as many candidates as anchors, got {len(candidates)} and {len(anchors)}")
    if not anchors:
        return np.zeros(0, dtype=np.float32)
    fn, processor, divisor = SCORERS[scorer]
    if scorer == "word_levenshtein":  # same scores, C speed: each distinct word becomes one code point
        anchors, candidates, processor = *_word_codes(anchors, candidates), None
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


def _word_codes(anchors: list[str], candidates: list[str]) -> tuple[list[str], list[str]]:
    """Each text as a string of one character per word (word i of the vocabulary -> chr(0x10000 + i)), so a
    character Levenshtein on the codes is the word Levenshtein on the texts. Distinct texts are coded in one
    pass of C-level str operations, "\x00" marking where a text ends."""
    uniq = list(dict.fromkeys([*anchors, *candidates]))
    if any("\x00" in t for t in uniq):
        raise ValueError("word_levenshtein: expected texts without NUL characters, got one; clean the input")
    words = " \x00 ".join(uniq).split()
    vocab = {w: chr(0x10000 + i) for i, w in enumerate(dict.fromkeys(words))}
    if len(vocab) > 0x10FFFF - 0x10000:
        raise ValueError(f"word_levenshtein: expected at most {0x10FFFF - 0x10000} distinct words, got {len(vocab)}")
    vocab["\x00"] = "\x00"
    code = dict(zip(uniq, "".join(map(vocab.__getitem__, words)).split("\x00")))
    return [code[t] for t in anchors], [code[t] for t in candidates]
