"""Blind scorers and SugarCrepe-style balancing: known cases, the rate promise as a property, and the real LM."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.filters.blind import balance_mask, bigram_logprob, pick_rate


def test_pick_rate_counts_ties_half_and_is_nan_when_empty():
    assert pick_rate(np.array([1.0, -1.0, 0.0, 0.0])) == 0.5
    assert np.isnan(pick_rate(np.zeros(0)))


def test_balance_keeps_mirror_cells_equal_and_picks_rows_by_key_hash():
    gaps = np.array([[1.0], [1.1], [0.9], [-1.0], [5.0], [-5.0], [6.0]])
    keys = [f"r{i}" for i in range(7)]
    keep = balance_mask(gaps, ["t"] * 7, keys, bins=2)
    # bins of |gap| (median 1.1): {0.9, 1, -1} and {1.1, 5, -5, 6}; each keeps one row per sign
    assert keep.sum() == 4 and keep[3] and keep[5]
    assert pick_rate(gaps[keep, 0]) == 0.5
    assert keep.tolist() == balance_mask(gaps, ["t"] * 7, keys, bins=2).tolist()  # deterministic
    assert balance_mask(gaps[[0, 3]], ["t", "t"], keys[:2], bins=1).all()  # already balanced: nothing dropped


def test_balance_is_per_stratum():
    gaps = np.array([[1.0], [2.0], [-1.0], [3.0]])
    keep = balance_mask(gaps, ["a", "a", "a", "b"], ["w", "x", "y", "z"], bins=1)
    assert keep.sum() == 2 and not keep[3]  # stratum b has no row to mirror its only row


@settings(max_examples=40, deadline=None)
@given(
    st.integers(20, 300),
    st.floats(-1.0, 2.0),
    st.sampled_from([0.5, 0.54, 0.6]),
    st.integers(1, 4),
    st.integers(0, 10**6),
)
def test_every_scorer_rate_is_bounded_after_balancing(n, bias, max_rate, bins, seed):
    rng = np.random.default_rng(seed)
    gaps = rng.normal(bias, 1.0, size=(n, 2)) + rng.normal(0, 0.3, size=(n, 1))  # two correlated scorers
    keep = balance_mask(gaps, ["t"] * n, [str(i) for i in range(n)], bins, max_rate)
    if keep.any():
        for j in range(2):
            assert 1 - max_rate - 1e-9 <= pick_rate(gaps[keep, j]) <= max_rate + 1e-9


def test_bigram_is_cross_fitted_and_prefers_seen_word_order():
    captions = [
        f"a {c} dog sits on a {s} sofa" for c in ("black", "brown", "white") for s in ("red", "blue", "green", "grey")
    ]
    groups = [f"g{i}" for i in range(len(captions))]
    shuffled = [" ".join(reversed(c.split())) for c in captions]
    a, c = bigram_logprob(captions, shuffled, groups, folds=3)
    assert (a > c).all()  # the reversed order never occurred in the other folds' captions
    unique = ["zebra giraffe parade"] + captions[1:]  # words seen nowhere else: no leak from its own text
    a2, _ = bigram_logprob(unique, shuffled, groups, folds=3)
    assert a2[0] < a.min()


def test_bigram_scores_a_text_that_is_also_an_anchor_with_its_anchor_fold():
    captions = [
        f"a {c} dog sits on a {s} sofa" for c in ("black", "brown", "white") for s in ("red", "blue", "green", "grey")
    ]
    groups = [f"g{i}" for i in range(len(captions))]
    negatives = captions[1:] + captions[:1]  # every negative is another group's anchor
    a, c = bigram_logprob(captions, negatives, groups, folds=3)
    assert c.tolist() == a[list(range(1, len(a))) + [0]].tolist()  # never scored by a model that counted it


def test_bigram_matches_with_words_given_or_not():
    from pipeline.filters.words import Words

    anchors, cands = ["a dog runs", "a cat sleeps", "a dog runs"], ["runs dog a", "a cat sleeps!", "a bird"]
    groups = ["g1", "g2", "g1"]
    plain = bigram_logprob(anchors, cands, groups, folds=2)
    shared = bigram_logprob(
        anchors, cands, groups, folds=2, words=Words(["unrelated words here", *dict.fromkeys(anchors + cands)])
    )
    assert [x.tolist() for x in plain] == [
        x.tolist() for x in shared
    ]  # extra texts change neither counts nor vocabulary


@pytest.mark.integration
def test_lm_prefers_a_fluent_caption_to_its_scrambled_words(embedded_engine):
    from pipeline.filters.blind import lm_mean_logprob

    texts = [
        "A man is riding a horse on the beach.",
        "Horse the beach man riding a is on a.",
        "A cat sleeps on a chair.",
    ]
    s = lm_mean_logprob(texts, embedded_engine.model, embedded_engine.tokenizer, batch_size=2)
    assert s.shape == (3,) and np.isfinite(s).all() and (s < 0).all()
    assert s[0] > s[1] and s[2] > s[1]
    alone = lm_mean_logprob(texts[:1], embedded_engine.model, embedded_engine.tokenizer)
    assert alone[0] == pytest.approx(s[0], abs=1e-4)  # padding and batching do not change a text's score
