"""The words of many texts as integer ids, split once per stage run and shared by the word-level Levenshtein
scorer (:func:`pipeline.filters.surface.surface_scores`) and the bigram proxy
(:func:`pipeline.filters.blind.bigram_logprob`).

Words are what ``str.split()`` returns (a NUL character counts as a space). The work per token is C-level
(one join, one split, one hash lookup per token in ``pandas.factorize``); everything after that is numpy over the token
array, and
per-word work (lower-casing, punctuation) runs once per distinct word.
"""

from __future__ import annotations

import functools
import string

import numpy as np
import pandas as pd

_END = "\x00"  # closes every text in the token stream; texts must not contain it
_SPACE_PUNCT = bytes.maketrans(string.punctuation.encode(), b" " * len(string.punctuation))  # UTF-8 safe: no
# byte of a multi-byte character is ASCII
_MAX_WORDS = 0x10FFFF - 0x10000  # one code point per word for the Levenshtein codes


class Words:
    """Token ids of distinct ``texts``: ``ids`` (T,) with an end token closing each text, ``text_of`` (T,) the
    text each token belongs to, ``vocab`` the distinct words (word 0 is the end token).

    >>> w = Words(["a dog", "a cat!"])
    >>> w.vocab, w.ids.tolist(), w.text_of.tolist()
    (['\\x00', 'a', 'dog', 'cat!'], [1, 2, 0, 1, 3, 0], [0, 0, 0, 1, 1, 1])
    """

    def __init__(self, texts: list[str]):
        self.texts = texts
        self.index = {t: i for i, t in enumerate(texts)}
        if len(self.index) != len(texts):
            raise ValueError("Words: expected distinct texts, got repeats; pass dict.fromkeys(texts)")
        joined = f"{_END} " + f" {_END} ".join(texts) + f" {_END}"  # a leading end token makes it word 0
        if joined.count(_END) != len(texts) + 1:  # a text holds NUL itself: it counts as a space there
            joined = f"{_END} " + f" {_END} ".join(t.replace(_END, " ") for t in texts) + f" {_END}"
        tokens = np.array(joined.split() if texts else [_END], dtype=object)
        ids, vocab = pd.factorize(tokens)  # ids in order of first appearance (hash-based, C speed)
        self.vocab: list[str] = vocab.tolist()
        self.ids = ids[1:].astype(np.int64)  # (T,)
        closes = self.ids == 0
        self.text_of = np.cumsum(closes) - closes  # (T,) an end token belongs to the text it closes

    @property
    def fits_codes(self) -> bool:
        """Whether every distinct word gets its own code point (about a million words; beyond, a caller codes
        each pair of texts over its own words)."""
        return len(self.vocab) <= _MAX_WORDS

    @functools.cached_property
    def codes(self) -> list[str]:
        """Each text as a string of one character per word (word i -> ``chr(0x10000 + i)``), so a character
        Levenshtein distance between two codes is the word Levenshtein distance between the texts."""
        if len(self.vocab) > _MAX_WORDS:
            raise ValueError(f"word_levenshtein: expected at most {_MAX_WORDS} distinct words, got {len(self.vocab)}")
        points = (self.ids + 0x10000).astype(np.uint32)
        points[self.ids == 0] = 0
        return points.tobytes().decode("utf-32-le").split("\x00")[: len(self.texts)]

    def normalised(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Tokens lower-cased with ASCII punctuation as spaces (a word may become several or none), the end
        token as 0: ``ids`` (T',), ``text_of`` (T',) and the vocabulary size (end token included)."""
        parts = [w.lower().encode("utf-8").translate(_SPACE_PUNCT).decode("utf-8").split() for w in self.vocab]
        parts[0] = [_END]
        where = {w: i for i, w in enumerate(dict.fromkeys([_END, *(p for ws in parts for p in ws)]))}  # _END -> 0
        lens = np.array([len(ws) for ws in parts], dtype=np.int64)  # (V,) normalised words per word
        flat = np.fromiter((where[p] for ws in parts for p in ws), dtype=np.int64, count=int(lens.sum()))
        starts = np.cumsum(lens) - lens  # (V,) where each word's normalised words begin in ``flat``
        n = lens[self.ids]  # (T,) normalised words per token
        begin = np.repeat(starts[self.ids], n)  # (T',) each new token's word's first normalised word
        offset = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)  # (T',) position within the word
        return flat[begin + offset], np.repeat(self.text_of, n), len(where)
