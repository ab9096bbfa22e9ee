"""Word-level diff of an anchor and a rewrite, with moved words told apart from changed ones.

A swap moves words: "A **man** holding a frisbee on a **field**" -> "A **field** holding a frisbee on a **man**".
:func:`word_diff` aligns the two word sequences on case- and punctuation-folded words by their longest common
subsequence (``difflib``'s longest-block matching would keep "a man" and call "on a field" changed), marks
what only one side has as ``del`` (anchor) or ``ins`` (rewrite), and then re-marks as ``moved`` every such word
whose folded form is also unmatched on the other side (the word is still there, elsewhere). Texts over
``LCS_WORDS`` words (long rationales) are aligned by ``difflib`` instead, to keep a page fast.

Example:
    >>> a, b = word_diff("A man on a field.", "A field on a man.")
    >>> [(w, c) for w, c in a if c], [(w, c) for w, c in b if c]
    ([('man', 'moved'), ('field.', 'moved')], [('field', 'moved'), ('man.', 'moved')])
    >>> word_diff("a red car", "a blue car")[1]
    [('a', ''), ('blue', 'ins'), ('car', '')]
"""

from __future__ import annotations

import re
from collections import Counter
from difflib import SequenceMatcher

Marked = list[tuple[str, str]]  # (word as written, "" | "del" | "ins" | "moved")


def _fold(word: str) -> str:
    return re.sub(r"[^\w]", "", word.lower()) or word


LCS_WORDS = 120


def _marks(fa: list[str], fb: list[str]) -> tuple[list[str], list[str]]:
    """ "" for a word in the alignment, else "del" (anchor side) / "ins" (other side)."""
    ma, mb = ["del"] * len(fa), ["ins"] * len(fb)
    if max(len(fa), len(fb)) > LCS_WORDS:
        for block in SequenceMatcher(None, fa, fb, autojunk=False).get_matching_blocks():
            ma[block.a : block.a + block.size] = [""] * block.size
            mb[block.b : block.b + block.size] = [""] * block.size
        return ma, mb
    n, m = len(fa), len(fb)
    L = [[0] * (m + 1) for _ in range(n + 1)]  # L[i][j]: LCS length of fa[i:], fb[j:]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            L[i][j] = L[i + 1][j + 1] + 1 if fa[i] == fb[j] else max(L[i + 1][j], L[i][j + 1])
    i = j = 0
    while i < n and j < m:
        if fa[i] == fb[j]:
            ma[i], mb[j], i, j = "", "", i + 1, j + 1
        elif L[i + 1][j] >= L[i][j + 1]:
            i += 1
        else:
            j += 1
    return ma, mb


def word_diff(anchor: str | None, other: str | None) -> tuple[Marked, Marked]:
    """(anchor's words, other's words), each word with its mark."""
    a, b = (anchor or "").split(), (other or "").split()
    fa, fb = [_fold(w) for w in a], [_fold(w) for w in b]
    ma, mb = _marks(fa, fb)
    only_a = Counter(f for f, m in zip(fa, ma) if m)
    only_b = Counter(f for f, m in zip(fb, mb) if m)
    both = only_a & only_b  # unmatched on both sides: moved, as many times as it is on both
    for words, marks, folded in ((a, ma, fa), (b, mb, fb)):
        left = Counter(both)
        for k, f in enumerate(folded):
            if marks[k] and left[f] > 0:
                marks[k], left[f] = "moved", left[f] - 1
    return list(zip(a, ma)), list(zip(b, mb))
