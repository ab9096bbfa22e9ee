"""Hard negatives mined from a corpus of passages, and the rules that drop the ones likely to be false negatives.

For a query q with its own (positive) passage p, in a corpus C of unit vectors where the query may mine only the
passages of its own pool (the kind's pool is the split: a test query never gets a training passage, nor the
other way round), with cos the cosine rounded to :data:`ROUND` decimals:

1. candidates: the ``cfg.candidates`` passages of the pool other than p, by cosine to q, highest first (ties by
   corpus order): sentence-transformers' ``mine_hard_negatives`` with ``range_max = candidates``;
2. each candidate is dropped by the first rule it fails (:func:`candidate_reasons`; a rule set to None is off):
   - ``above_max_score``: cos(q, c) > ``max_score`` (mine_hard_negatives' ``max_score``);
   - ``absolute_margin``: cos(q, c) > cos(q, p) - ``absolute_margin`` (mine_hard_negatives' ``absolute_margin``);
   - ``positive_aware``: cos(q, c) > ``max_positive_ratio`` x cos(q, p): NV-Retriever's TopK-PercPos (Moreira et
     al. 2024, arXiv:2407.15831), whose best setting, 0.95, is the default: a passage nearly as close to the query
     as its own is likely to answer it too;
3. :func:`select`: the survivors in order are the negatives, the first ``num_negatives`` of them, skipping those an
   LLM judge scored as answering the query (``false_negative``) or could not score (``fn_no_score``).

Beside them, each query's positive gets its own rank in the pool (1 + the passages closer to the query than it):
Promptagator's round-trip consistency check (Dai et al. 2022, arXiv:2209.11755) keeps a synthetic query only when a
retriever finds its own passage in the top ``round_trip`` (the kind applies it; their K was 1).

The cosines are rounded before ranking, so float noise of the last bits never reorders candidates: the same
embeddings give the same candidates, and a resumed run plans the same false-negative judge units.

>>> q = np.array([[1.0, 0.0]])
>>> corpus = np.array([[0.8, 0.6], [1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])  # cosines 0.8, 1.0, 0.6, 0.0
>>> m = mine(q, corpus, np.array([0]), np.zeros(4, int), MiningConfig(candidates=3))[0]
>>> m.pos_sim, m.pos_rank, [(c.passage, c.sim, c.rank, str(c.reason)) for c in m.candidates]
(0.8, 2, [(1, 1.0, 1, 'positive_aware'), (2, 0.6, 2, ''), (3, 0.0, 3, '')])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.records import Reason
from pipeline.settings import Section


class MiningConfig(Section):
    """Hard negatives from the corpus (sentence-transformers' ``mine_hard_negatives``; NV-Retriever's positive-aware
    mining, Moreira et al. 2024): the passages closest to the query by cosine, skipping its own passage."""

    model: Path | None = Field(
        None, description="A sentence-transformers folder; default: the bundled all-MiniLM-L6-v2."
    )
    num_negatives: int = Field(3, ge=1, le=32, description="Negatives per query (one row each).")
    candidates: int = Field(
        10,
        ge=1,
        description="The closest this many passages are considered (mine_hard_negatives' "
        "range_max); fewer negatives are kept when the rules drop more.",
    )
    max_positive_ratio: float | None = Field(
        0.95,
        gt=0.0,
        le=1.0,
        description="NV-Retriever's TopK-PercPos: drop a candidate whose cosine to the query is above this fraction of "
        "the positive's (0.95 was the paper's best); none: off.",
    )
    absolute_margin: float | None = Field(
        None,
        description="mine_hard_negatives' absolute_margin: drop a candidate "
        "with cosine > cos(query, positive) - margin; none: off.",
    )
    max_score: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="mine_hard_negatives' max_score: drop a candidate with cosine above this; none: off.",
    )
    round_trip: int | None = Field(
        1,
        ge=1,
        description="Promptagator's round-trip consistency: keep a training query only when its own passage ranks in "
        "the top this many of its pool by cosine (1, the paper's K; a query that finds another passage first is vague "
        "or about something else, docs/retrieval.md); raise it for corpora with many near-duplicate passages; none: "
        "off. Test queries are exempt: filtered by the encoder that is then evaluated, the test split would hold only "
        "the queries that encoder already answers.",
    )


ROUND = 4  # decimals of the cosines candidates are ranked by


@dataclass(frozen=True)
class Candidate:
    """One mined passage of one query."""

    passage: int  # its row in the corpus
    sim: float  # its cosine to the query, rounded to ROUND decimals
    rank: int  # 1: the closest passage of the pool other than the positive
    reason: Reason | Literal[""]  # "" when it passed the rules, else the first rule it failed


def candidate_reasons(sims: np.ndarray, pos_sim: float, cfg: MiningConfig) -> np.ndarray:
    """(K,) the first rule each candidate fails ("" when none), for candidate cosines ``sims`` (K,) and the
    positive's cosine ``pos_sim``; the rules of the module docstring, in its order.

    >>> candidate_reasons(np.array([0.9, 0.78, 0.5]), 0.8, MiningConfig()).astype(str).tolist()
    ['positive_aware', 'positive_aware', '']
    >>> absolute = MiningConfig(max_positive_ratio=None, absolute_margin=0.05, max_score=0.85)
    >>> candidate_reasons(np.array([0.9, 0.7]), 0.8, absolute).astype(str).tolist()
    ['above_max_score', '']
    """
    out = np.full(len(sims), "", dtype=object)
    rules = [
        (Reason.above_max_score, None if cfg.max_score is None else sims > cfg.max_score),
        (Reason.absolute_margin, None if cfg.absolute_margin is None else sims > pos_sim - cfg.absolute_margin),
        (Reason.positive_aware, None if cfg.max_positive_ratio is None else sims > cfg.max_positive_ratio * pos_sim),
    ]
    for reason, failed in rules:
        if failed is not None:
            out[(out == "") & failed] = reason
    return out


@dataclass(frozen=True)
class Mined:
    """One query's mining: its positive's cosine and rank in the pool, and its candidates in rank order."""

    pos_sim: float
    pos_rank: int  # 1 + the passages of the pool closer to the query than its positive (ties count for it)
    candidates: list[Candidate]


def mine(
    queries: np.ndarray,
    corpus: np.ndarray,
    positives: np.ndarray,
    pools: np.ndarray,
    cfg: MiningConfig,
    chunk: int = 1024,
) -> list[Mined]:
    """Each query's :class:`Mined`: its candidates in rank order, each with its rule verdict.

    ``queries`` [Q, D] and ``corpus`` [P, D] are unit vectors; ``positives`` (Q,) is each query's passage row in the
    corpus; ``pools`` (P,) labels the passages: a query mines only its positive's pool. Memory: a [chunk, P] block of
    cosines at a time.
    """
    pools = np.asarray(pools)
    out: list[Mined] = []
    order_key = np.arange(len(corpus))
    for lo in range(0, len(queries), chunk):
        sims = np.round(queries[lo : lo + chunk] @ corpus.T, ROUND).astype(np.float64)  # [q, P]
        for i, row in enumerate(sims):
            p = int(positives[lo + i])
            pool = np.flatnonzero((pools == pools[p]) & (order_key != p))  # (M,) the positive's pool, without it
            ranked = pool[np.lexsort((pool, -row[pool]))][: cfg.candidates]  # highest cosine first, then corpus order
            reasons = candidate_reasons(row[ranked], row[p], cfg)
            out.append(
                Mined(
                    float(row[p]),
                    1 + int((row[pool] > row[p]).sum()),
                    [Candidate(int(j), float(row[j]), k + 1, r) for k, (j, r) in enumerate(zip(ranked, reasons))],
                )
            )
    return out


@dataclass(frozen=True)
class Drop:
    """A candidate that did not become a negative, and why (``score``: its cosine, or the judge's score)."""

    candidate: Candidate
    reason: Reason
    score: float


def select(
    cands: list[Candidate], judged: dict[int, int | None], num: int, fn_max_score: int
) -> tuple[list[Candidate], list[Drop]]:
    """The negatives (the first ``num`` candidates that pass) and the drops met on the way to them, in rank order.

    ``judged`` maps a candidate's passage to the false-negative judge's score (None: no parsable score); a
    candidate not in it was not judged and passes on the mining rules alone. Candidates after the last negative
    picked are neither kept nor dropped: they changed nothing.

    >>> cs = [Candidate(5, 0.9, 1, Reason.positive_aware), Candidate(6, 0.7, 2, ""), Candidate(7, 0.6, 3, ""),
    ...       Candidate(8, 0.5, 4, ""), Candidate(9, 0.4, 5, "")]
    >>> keep, drops = select(cs, {6: 4, 7: None, 8: 1}, 2, 3)
    >>> [c.passage for c in keep], [(d.candidate.passage, str(d.reason), d.score) for d in drops]
    ([8, 9], [(5, 'positive_aware', 0.9), (6, 'false_negative', 4.0), (7, 'fn_no_score', nan)])
    """
    keep: list[Candidate] = []
    drops: list[Drop] = []
    for c in cands:
        if len(keep) == num:
            break
        score = judged.get(c.passage)  # None: not judged, or no parsable score
        if c.reason:
            drops.append(Drop(c, c.reason, c.sim))
        elif c.passage in judged and score is None:
            drops.append(Drop(c, Reason.fn_no_score, float("nan")))
        elif score is not None and score >= fn_max_score:
            drops.append(Drop(c, Reason.false_negative, float(score)))
        else:
            keep.append(c)
    return keep, drops
