"""Exact and near-duplicate detection: masks that keep the first occurrence.

Exact: texts equal after normalisation (case, whitespace, punctuation). Near: rapidfuzz ``ratio`` of two
normalised texts at or above a threshold, compared only within a group (the rows of one caption) so the
cost stays linear in the number of groups.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import pandas as pd
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


# normalise_all's one table: what bytes.split() splits on becomes a space; NUL (which separates texts) is kept
_ASCII_TO_SPACE = bytes.maketrans(b"\t\n\r\x0b\x0c", b"     ")
_ASCII_DROP_BUT_NUL = _ASCII_DROP.replace(b"\x00", b"")


def normalise_all(texts: list[str]) -> list[str]:
    """:func:`normalise` of each text; ASCII texts go through C-level bytes operations all at once.

    >>> normalise_all(["  A Dog,  on a   SOFA! ", "", "Café!"])
    ['a dog on a sofa', '', 'café']
    """
    ascii_rows = [i for i, t in enumerate(texts) if t.isascii() and "\x00" not in t]
    out = [normalise(t) for t in texts] if len(ascii_rows) < len(texts) else [""] * len(texts)
    if ascii_rows:  # "\x00" separates the texts; spaces are collapsed, then trimmed at every text's ends
        blob = "\x00".join(texts[i] for i in ascii_rows).lower().encode("ascii")
        blob = blob.translate(_ASCII_TO_SPACE, _ASCII_DROP_BUT_NUL)
        while b"  " in blob:  # each pass halves every run of spaces
            blob = blob.replace(b"  ", b" ")
        blob = blob.replace(b" \x00", b"\x00").replace(b"\x00 ", b"\x00").strip(b" ")
        for i, t in zip(ascii_rows, blob.decode("ascii").split("\x00")):
            out[i] = t
    return out


def repeated(keys: list[str] | np.ndarray) -> np.ndarray:
    """True where a key repeats an earlier one (keys: strings, or any hashable values as an array).

    >>> repeated(["a", "b", "a"]).tolist(), repeated(np.array([7, 7, 3])).tolist()
    ([False, False, True], [False, True, False])
    """
    if not len(keys):
        return np.zeros(0, dtype=bool)
    codes, _ = pd.factorize(np.asarray(keys, dtype=object) if isinstance(keys, list) else keys)  # first seen = new code
    return codes <= np.maximum.accumulate(np.concatenate([[-1], codes[:-1]]))  # (N,) not above every earlier code


def exact_duplicates(texts: list[str]) -> np.ndarray:
    """True where a text repeats an earlier one after :func:`normalise`.

    >>> exact_duplicates(["A dog.", "a dog", "a cat"]).tolist()
    [False, True, False]
    """
    return repeated(normalise_all(texts))


def near_duplicate_scores(norm: list[str], groups: list[str]) -> np.ndarray:
    """Highest rapidfuzz ``ratio`` (0-1) of each text (already :func:`normalise`-d) to an earlier text of its
    group; 0 for the first.

    All within-group pairs (i < j) are scored in one ``cpdist`` call (one call per group costs more in
    thread start-up than in scoring).

    >>> scores = near_duplicate_scores(["a big red car", "a big red cars", "a blue car"], ["g"] * 3)
    >>> [round(float(x), 2) for x in scores]
    [0.0, 0.96, 0.7]
    """
    gid = np.fromiter(
        map({g: i for i, g in enumerate(dict.fromkeys(groups))}.__getitem__, groups), dtype=np.int64, count=len(groups)
    )  # (N,) group number
    order = np.argsort(gid, kind="stable")  # rows grouped, original order kept within each group
    g_sorted = gid[order]
    first_parts, later_parts = [], []
    for d in range(1, int(np.bincount(gid).max()) if len(gid) else 1):  # pairs d apart in the grouped order
        same = g_sorted[:-d] == g_sorted[d:]
        first_parts.append(order[:-d][same])
        later_parts.append(order[d:][same])
    first = np.concatenate(first_parts) if first_parts else np.zeros(0, np.int64)  # (P,) earlier row of each pair
    later = np.concatenate(later_parts) if later_parts else np.zeros(0, np.int64)  # (P,) later row
    out = np.zeros(len(norm), dtype=np.float32)
    if not len(first):
        return out
    sim = (
        process.cpdist(
            [norm[i] for i in first.tolist()],
            [norm[j] for j in later.tolist()],
            scorer=fuzz.ratio,
            dtype=np.float32,
            workers=-1,
        )
        / 100.0
    )  # (P,) one score per within-group pair
    np.maximum.at(out, later, sim)
    return out


def near_duplicates(texts: list[str], groups: list[str], threshold: float) -> np.ndarray:
    """True where a text is within ``threshold`` (0-1 ``ratio``) of an earlier text of the same group.

    >>> near_duplicates(["a big red car", "a big red cars", "a blue car"], ["g", "g", "g"], 0.95).tolist()
    [False, True, False]
    """
    return near_duplicate_scores(normalise_all(texts), groups) >= threshold
