"""Hard-negative mining on hand-made unit vectors whose cosines are known: the positive is skipped, the rules drop
what they should (positive-aware, margin, max score), pools are respected, ranking is deterministic, and the
selection records each drop it met."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.text.mining import Candidate, MiningConfig, candidate_reasons, mine, select


def unit(cos: float) -> list[float]:
    """A 2-d unit vector at cosine ``cos`` to the query [1, 0]."""
    return [cos, float(np.sqrt(1 - cos * cos))]


Q = np.array([[1.0, 0.0]])


def corpus(*cosines: float) -> np.ndarray:
    return np.array([unit(c) for c in cosines])


def verdicts(cands: list[Candidate]) -> list[tuple[int, float, int, str]]:
    return [(c.passage, c.sim, c.rank, c.reason) for c in cands]


def test_the_positive_is_skipped_even_when_it_is_not_the_closest():
    # passage 2 is the positive (cosine 0.5); passage 0 is closer (0.9): a false negative by the positive-aware rule
    m = mine(Q, corpus(0.9, 0.3, 0.5, 0.1), np.array([2]), np.zeros(4, int), MiningConfig())[0]
    assert (m.pos_sim, m.pos_rank) == (0.5, 2)  # one passage is closer than the positive: round trip rank 2
    assert verdicts(m.candidates) == [(0, 0.9, 1, "positive_aware"), (1, 0.3, 2, ""), (3, 0.1, 3, "")]


def test_positive_aware_rule_drops_candidates_above_the_ratio_of_the_positive():
    cfg = MiningConfig(max_positive_ratio=0.95)
    m = mine(Q, corpus(0.8, 0.77, 0.75, 0.2), np.array([0]), np.zeros(4, int), cfg)[0]
    # 0.95 x 0.8 = 0.76: 0.77 is dropped, 0.75 kept
    assert [(c.sim, c.reason) for c in m.candidates] == [
        (0.77, "positive_aware"),
        (0.75, ""),
        (0.2, ""),
    ] and m.pos_rank == 1
    off = mine(Q, corpus(0.8, 0.77, 0.75, 0.2), np.array([0]), np.zeros(4, int), MiningConfig(max_positive_ratio=None))
    assert [c.reason for c in off[0].candidates] == ["", "", ""]


def test_margin_and_max_score_rules_in_order():
    cfg = MiningConfig(max_positive_ratio=None, absolute_margin=0.1, max_score=0.85)
    assert candidate_reasons(np.array([0.9, 0.75, 0.69, 0.7]), 0.8, cfg).tolist() == [
        "above_max_score",
        "absolute_margin",
        "",
        "",
    ]  # 0.7 is not > 0.8 - 0.1 (a margin is strict, as mine_hard_negatives')
    both = MiningConfig(max_positive_ratio=0.95, absolute_margin=0.02)
    assert candidate_reasons(np.array([0.79, 0.77]), 0.8, both).tolist() == ["absolute_margin", "positive_aware"]


def test_a_query_mines_only_its_positives_pool_and_only_the_closest_candidates():
    pools = np.array([0, 1, 0, 0, 1, 0])
    m = mine(Q, corpus(0.6, 0.9, 0.8, 0.5, 0.4, 0.3), np.array([0]), pools, MiningConfig(candidates=2))[0]
    assert [c.passage for c in m.candidates] == [2, 3]  # pool 0 without the positive; 1 and 4 are another split's
    assert m.pos_rank == 2  # only passage 2 of its pool is closer (passage 1, closer still, is in the other pool)


def test_ranking_is_deterministic_and_immune_to_float_noise():
    # two candidates whose cosines differ by float noise: the rounding makes them a tie, broken by corpus order
    c = corpus(0.9, 0.6, 0.6, 0.2)
    c[1] = unit(0.6 - 1e-7)
    c[2] = unit(0.6 + 1e-7)
    first = mine(Q, c, np.array([0]), np.zeros(4, int), MiningConfig())[0].candidates
    again = mine(Q, c.copy(), np.array([0]), np.zeros(4, int), MiningConfig())[0].candidates
    assert [x.passage for x in first] == [1, 2, 3] and verdicts(first) == verdicts(again)


def test_chunked_mining_matches_one_chunk():
    rng = np.random.default_rng(0)
    qs = rng.normal(size=(7, 8))
    ps = rng.normal(size=(20, 8))
    qs, ps = qs / np.linalg.norm(qs, axis=1, keepdims=True), ps / np.linalg.norm(ps, axis=1, keepdims=True)
    positives, pools = rng.integers(0, 20, 7), rng.integers(0, 2, 20)
    one = mine(qs, ps, positives, pools, MiningConfig())
    many = mine(qs, ps, positives, pools, MiningConfig(), chunk=3)
    assert one == many
    assert all(p not in [c.passage for c in m.candidates] for p, m in zip(positives, one))  # never the positive
    ranks = [1 + int(((ps @ q > ps[p] @ q + 1e-4) & (pools == pools[p])).sum()) for q, p in zip(qs, positives)]
    assert [m.pos_rank for m in one] == ranks


@pytest.mark.parametrize(
    "judged, keep, drops",
    [
        ({}, [1, 2], [(0, "positive_aware")]),  # no judge: the rules only
        ({1: 5, 2: 0}, [2, 3], [(0, "positive_aware"), (1, "false_negative")]),
        ({1: None, 2: 2}, [2, 3], [(0, "positive_aware"), (1, "fn_no_score")]),
        (
            {1: 3, 2: 4, 3: 3},
            [4],
            [(0, "positive_aware"), (1, "false_negative"), (2, "false_negative"), (3, "false_negative")],
        ),
    ],
)
def test_select_keeps_the_first_that_pass_and_records_the_drops_met(judged, keep, drops):
    cands = [
        Candidate(0, 0.9, 1, "positive_aware"),
        Candidate(1, 0.7, 2, ""),
        Candidate(2, 0.6, 3, ""),
        Candidate(3, 0.5, 4, ""),
        Candidate(4, 0.4, 5, ""),
    ]
    k, d = select(cands, judged, 2, 3)
    assert [c.passage for c in k] == keep and [(x.candidate.passage, x.reason) for x in d] == drops
    assert all(x.score == x.candidate.sim for x in d if x.reason == "positive_aware")
    assert all(x.score == judged[x.candidate.passage] for x in d if x.reason == "false_negative")
