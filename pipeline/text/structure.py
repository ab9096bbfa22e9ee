"""Structural type check: does an edit have the shape its declared negative type promises?

Works on word sequences with rapidfuzz (which aligns any sequences of hashables):
- ``permutation`` (swap_*, reshuffle_order): same multiset of words, different order;
- ``replace_span`` (replace_*): exactly one contiguous span differs, both sides non-empty;
- ``insertion`` (add_*): the source is a subsequence of the result, which has extra words;
- ``paraphrase``: a different word sequence of comparable length (0.5x to 2x).
A candidate that fails gets reason ``type_mismatch``; it is never relabelled to another type.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Callable, Literal

from rapidfuzz.distance import Indel, Levenshtein

Shape = Literal["permutation", "replace_span", "insertion", "paraphrase"]
_WORD = re.compile(r"[\w'-]+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens, punctuation dropped, "an" read as "a" (article agreement is not an edit)."""
    return ["a" if w == "an" else w for w in _WORD.findall(text.lower())]


def is_permutation(src: list[str], dst: list[str]) -> bool:
    return src != dst and Counter(src) == Counter(dst)


def is_replace_span(src: list[str], dst: list[str]) -> bool:
    ops = Levenshtein.opcodes(src, dst)
    changed = [i for i, op in enumerate(ops) if op.tag != "equal"]
    if not changed or changed[-1] - changed[0] + 1 != len(changed):
        return False  # nothing changed, or unchanged words sit between two changes
    first, last = ops[changed[0]], ops[changed[-1]]
    removed, added = src[first.src_start : last.src_end], dst[first.dest_start : last.dest_end]
    return bool(removed) and bool(added) and removed != added


def is_insertion(src: list[str], dst: list[str]) -> bool:
    return len(dst) > len(src) and Indel.distance(src, dst) == len(dst) - len(src)


def is_paraphrase(src: list[str], dst: list[str]) -> bool:
    return bool(dst) and src != dst and 0.5 <= len(dst) / max(len(src), 1) <= 2.0


CHECKS: dict[Shape, Callable[[list[str], list[str]], bool]] = {
    "permutation": is_permutation,
    "replace_span": is_replace_span,
    "insertion": is_insertion,
    "paraphrase": is_paraphrase,
}


def check_shapes(shape: Shape, sources: list[str], candidates: list[str]) -> list[bool]:
    """Vectorised over pairs: ``result[i]`` says whether candidates[i] has ``shape`` w.r.t. sources[i]."""
    check = CHECKS[shape]
    return [check(words(s), words(c)) for s, c in zip(sources, candidates, strict=True)]
