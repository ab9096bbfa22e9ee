"""Validate one synthetic retrieval query against its passage: a strict check, never a repair.

A query is rejected when it is empty, a refusal, chatter ("Question: ...", "Here is ..."), more than one line,
cut at max_tokens (:func:`pipeline.text.edits.screen`), a copy of its passage (``copy_of_passage``: the passage
itself, or 6+ words of which 80% are one verbatim run of the passage), longer than ``max_words`` (``too_long``),
or not of its type's shape (``type_mismatch``, :data:`SHAPES`).
"""

from __future__ import annotations

import re
from enum import Enum

from pipeline.records import Reason
from pipeline.text.edits import Failure, screen


class QueryType(str, Enum):
    """Retrieval query types, each with its template ``prompts/retrieval/<type>.yaml`` and its own shape check
    (:data:`pipeline.kinds.retrieval.SHAPES`): InPars' and Promptagator's queries, in three styles."""

    keyword = "keyword"  # a web-search style query of a few words
    question = "question"  # a natural question the passage answers
    claim = "claim"  # a statement the passage supports, in other words (fact-checking style retrieval)


_LABEL = re.compile(r"^\W*(search query|query|question|claim|keywords?|statement)\s*:", re.I)
_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"[.!?]\s+\S")  # a sentence ends inside the text: more than one sentence
_QUOTES = "\"'`“”‘’"


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _keyword(q: str) -> str:
    return "" if len(words(q)) <= 8 and not q.endswith("?") else "expected at most 8 words and no question mark"


def _question(q: str) -> str:
    return "" if q.endswith("?") and not _SENTENCE_END.search(q) else "expected one question ending in '?'"


def _claim(q: str) -> str:
    return (
        ""
        if not q.endswith("?") and len(words(q)) >= 4 and not _SENTENCE_END.search(q)
        else "expected one statement of 4+ words"
    )


# Explicit dispatch: each query type's shape check ("" when the query has it), beside the type names.
SHAPES = {QueryType.keyword.value: _keyword, QueryType.question.value: _question, QueryType.claim.value: _claim}


def copied_share(query: str, passage: str) -> float:
    """Share of the query's words in its longest run of words found verbatim in the passage.

    >>> copied_share("Mars looks red because of iron oxide dust", "Mars looks red because its surface is dust."), (
    ...     copied_share("", "x")
    ... )
    (0.5, 0.0)
    """
    q, text = words(query), " " + " ".join(words(passage)) + " "
    best = 0
    for i in range(len(q)):
        for j in range(len(q), i + best, -1):  # the longest run from i first
            if " " + " ".join(q[i:j]) + " " in text:
                best = j - i
                break
    return best / len(q) if q else 0.0


def check_query(text: str, finish_reason: str, passage: str, query_type: str, max_words: int) -> str | Failure:
    """The query of one completion, or why it is not one (the module docstring's rules, in its order).

    >>> check_query("Why does Mars look red?", "stop", "Mars looks red because of dust.", "question", 32)
    'Why does Mars look red?'
    >>> check_query("Question: why is Mars red?", "stop", "Mars is red.", "question", 32).reason
    <Reason.chatter: 'chatter'>
    """
    line = screen(text, finish_reason)
    if isinstance(line, Failure):
        return line
    q = line.strip().strip(_QUOTES).strip()
    n, shape = len(words(q)), SHAPES[query_type](q)
    if _LABEL.match(q):
        return Failure(Reason.chatter, q[:80])
    if n == 0:
        return Failure(Reason.empty)
    if words(q) == words(passage) or (n >= 6 and copied_share(q, passage) >= 0.8):
        return Failure(Reason.copy_of_passage, f"{copied_share(q, passage):.2f} of its words copied in a run")
    if n > max_words:
        return Failure(Reason.too_long, f"{n} words")
    if shape:
        return Failure(Reason.type_mismatch, shape)
    return q
