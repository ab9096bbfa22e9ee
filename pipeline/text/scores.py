"""The LLM judge's 0-5 score (the STS scale), shared by the kinds that ask a model to rate a pair: pairs (sentence,
candidate; SynCSE, MultiCSR) and retrieval (query, passage; InPars)."""

from __future__ import annotations

import re

SCORES = tuple(str(i) for i in range(6))  # the judge's answers (a structured-output choice where the engine has one)
_SCORE = re.compile(r"^\W*([0-5])(?:\.\d+)?(?:\s*(?:/\s*5|out of 5))?\W*$")


def parse_score(text: str) -> int | None:
    """The judge's 0-5 score: one digit, optionally "/5", "out of 5" or a decimal part; None otherwise.

    >>> parse_score(" 4"), parse_score("3/5"), parse_score("5."), parse_score("Similarity: 4"), parse_score("7")
    (4, 3, 5, None, None)
    """
    m = _SCORE.match(text.strip())
    return int(m.group(1)) if m else None
