"""Choosing a paraphrase positive among several sampled candidates (issue 32).

What moves a text encoder on paraphrase-vs-edit tests is keeping *true* paraphrases close (READ, arXiv:2510.16540),
and a 135M generator's first sample is mostly a near-copy ("A man jogs" -> "A man is jogging") or drops content
("... in a bright office" -> "..."). So the paraphrase unit samples ``negatives.paraphrase_candidates`` texts;
each passes the unit's parse and shape checks and, where a parse can tell, keeps the caption's content
(:func:`content_failure`); the valid ones are ordered least surface-similar first (:func:`by_wording`), and the
filter stage (:mod:`pipeline.filters.score`) keeps the first that is inside the positive's surface band and above
its embedding-similarity floor: the most differently worded candidate that still means the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _content(doc: Any) -> tuple[int, tuple[str, ...]]:
    """(number of noun phrases, the numbers written in the text, sorted) of a spaCy doc. Noun phrases, not noun
    tags: the small English model tags "runs" in "A dog runs." as a noun, yet still finds one noun phrase there."""
    numbers = tuple(sorted(t.lower_ for t in doc if t.like_num))
    return sum(1 for _ in doc.noun_chunks), numbers


def content_failure(caption: Any, candidate: Any) -> str:
    """Why ``candidate`` (a spaCy doc) does not keep the content of ``caption`` as far as a parse can tell, or ''.
    A thing lost or added changes the number of noun phrases ("... in a bright office" dropped: 3 -> 2; a synonym
    keeps it: "the shore" for "the beach" passes, and the embedding floor judges it); a number must stay as
    written ("two" and "2" differ: a rewrite should not change it)."""
    (n_cap, num_cap), (n_cand, num_cand) = _content(caption), _content(candidate)
    if n_cand < n_cap:
        return f"a noun phrase lost: {n_cap} in the caption, {n_cand} in the paraphrase"
    if n_cand > n_cap:
        return f"a noun phrase added: {n_cap} in the caption, {n_cand} in the paraphrase"
    if num_cap != num_cand:
        return f"numbers changed: {list(num_cap)} -> {list(num_cand)}"
    return ""


def by_wording(caption: str, texts: list[str]) -> list[int]:
    """Indices of ``texts`` ordered by surface similarity to ``caption`` (rapidfuzz ratio), least similar first;
    ties keep sample order."""
    from pipeline.filters.surface import surface_similarity

    if not texts:
        return []
    return np.argsort(surface_similarity([caption] * len(texts), texts), kind="stable").tolist()
