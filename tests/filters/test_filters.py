"""Filters: hand-made cases with known outcomes, and the properties the weights promise."""

from __future__ import annotations

import string

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.filters.dedup import (
    exact_duplicates,
    near_duplicate_scores,
    near_duplicates,
    normalise,
    normalise_all,
    repeated,
)
from pipeline.filters.propensity import (
    propensity_weights,
    surface_features,
    weighted_auc,
)
from pipeline.filters.surface import SCORERS, in_band, surface_scores
from pipeline.filters.words import Words

A = "a dog chases a cat in the park"


@pytest.mark.parametrize(
    ("candidate", "scorer", "expected"),
    [
        ("a cat chases a dog in the park", "token_sort_ratio", 1.0),  # a swap keeps the words
        ("a cat chases a dog in the park", "token_set_ratio", 1.0),
        ("a dog chases a bird in the park", "word_levenshtein", 7 / 8),  # one word of eight replaced
        (A, "ratio", 1.0),
        ("zzz", "ratio", 0.0),
    ],
)
def test_surface_scorers_on_known_pairs(candidate, scorer, expected):
    assert surface_scores([A], [candidate], scorer)[0] == pytest.approx(expected, abs=1e-3)


def test_every_scorer_matches_bare_rapidfuzz_pairwise():
    from rapidfuzz import fuzz
    from rapidfuzz.distance import Levenshtein

    cands = ["a dog chases a bird", "the park", "A dog chases a cat in the park!"]
    bare = {
        "ratio": lambda c: fuzz.ratio(A, c) / 100,
        "token_sort_ratio": lambda c: fuzz.token_sort_ratio(A, c) / 100,
        "token_set_ratio": lambda c: fuzz.token_set_ratio(A, c) / 100,
        "word_levenshtein": lambda c: Levenshtein.normalized_similarity(A.split(), c.split()),
    }
    assert set(bare) == set(SCORERS)
    for name, fn in bare.items():
        assert surface_scores([A] * 3, cands, name).tolist() == pytest.approx([fn(c) for c in cands], abs=1e-4), name


def test_bands_and_mismatched_lengths():
    assert in_band(np.array([0.39, 0.4, 0.8, 0.81]), 0.4, 0.8).tolist() == [False, True, True, False]
    with pytest.raises(ValueError, match="expected as many candidates as anchors, got 1 and 2"):
        surface_scores([A, A], [A])


def test_dedup_exact_and_near_within_groups_only():
    assert normalise("A  Dog, on a SOFA!") == "a dog on a sofa"
    texts = ["A dog on a sofa.", "a dog on a sofa", "a dog on the sofa", "a dog on a sofas", "a dog on a sofas"]
    groups = ["1", "1", "1", "1", "2"]
    assert exact_duplicates(texts).tolist() == [False, True, False, False, True]
    near = near_duplicates(texts, groups, 0.95)
    assert near.tolist() == [False, True, False, True, False]  # the last is in another group


# Characters that exercise every branch of the normalisers: ASCII and Unicode whitespace, punctuation, "_",
# NUL, a non-ASCII letter (NFKC path) and an ASCII separator that bytes.split() does not split on.
_ODD = st.text(alphabet=list(" \t\n\r\x0b\x0c\x1c\u3000abcXYZ,.!_'\u00e9\u00c9\x00-\ufb01"), max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.lists(_ODD, max_size=20))
def test_normalise_all_equals_normalise_one_by_one(texts):
    assert normalise_all(texts) == [normalise(t) for t in texts]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "dd"]), max_size=30))
def test_repeated_marks_every_later_copy(keys):
    expected = [k in keys[:i] for i, k in enumerate(keys)]
    assert repeated(keys).tolist() == expected
    codes = np.array([hash(k) for k in keys], dtype=np.int64)
    assert repeated(codes).tolist() == expected


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("xyz"), st.sampled_from(["a red car", "a red cars", "the blue bus", "a bus"])),
        max_size=25,
    )
)
def test_near_duplicate_scores_equal_the_pairwise_definition(rows):
    from rapidfuzz import fuzz

    groups, texts = [g for g, _ in rows], [t for _, t in rows]
    expected = [
        max([fuzz.ratio(texts[j], texts[i]) / 100 for j in range(i) if groups[j] == groups[i]], default=0.0)
        for i in range(len(rows))
    ]
    assert near_duplicate_scores(texts, groups).tolist() == pytest.approx(expected, abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(st.lists(_ODD, min_size=1, max_size=8, unique=True))
def test_words_split_like_str_split_and_code_one_char_per_word(texts):
    words = Words(texts)
    split = [t.replace("\x00", " ").split() for t in texts]
    assert [[words.vocab[i] for i in words.ids[words.text_of == k] if i != 0] for k in range(len(texts))] == split
    assert [len(c) for c in words.codes] == [len(s) for s in split]
    ids, text_of, size = words.normalised()
    lowered = [
        t.replace("\x00", " ").lower().translate({ord(c): " " for c in string.punctuation}).split() for t in texts
    ]
    assert [int((text_of == k).sum()) - 1 for k in range(len(texts))] == [len(x) for x in lowered]  # + the end token
    assert ids.max(initial=0) < size


def test_word_levenshtein_counts_words_and_refuses_repeated_texts():
    assert surface_scores(["a red car"], ["a blue car"], "word_levenshtein").tolist() == [
        pytest.approx(2 / 3, abs=1e-4)
    ]
    with pytest.raises(ValueError, match="expected distinct texts"):
        Words(["a", "a"])


def test_word_levenshtein_beyond_a_million_distinct_words_is_the_same_score(monkeypatch):
    """More distinct words than code points (millions of texts): each pair is coded over its own words, same scores."""
    import pipeline.filters.words as words_module

    anchors = ["a red car parks near the old mill", "two dogs run on the beach", "a man reads a book"]
    cands = ["a blue car parks near the old mill", "two dogs run on the sand", "a book reads a man"]
    whole = surface_scores(anchors, cands, "word_levenshtein")
    monkeypatch.setattr(words_module, "_MAX_WORDS", 3)
    assert not Words(list(dict.fromkeys(anchors + cands))).fits_codes
    assert surface_scores(anchors, cands, "word_levenshtein").tolist() == whole.tolist()


def _biased(n: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n), np.zeros(n)].astype(int)
    score = np.r_[rng.normal(0.4, 0.15, n), rng.normal(0.6, 0.15, n)]  # negatives look closer on the surface
    return score[:, None].astype(np.float32), labels


def test_inverse_propensity_weights_remove_the_surface_signal():
    x, y = _biased(400, 0)
    before = weighted_auc(x[:, 0], y)
    _, w = propensity_weights(x, y, clip=0.01)
    after = weighted_auc(x[:, 0], y, w)
    assert before < 0.25  # the surface score alone predicts the label
    assert after == pytest.approx(0.5, abs=0.05)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 60), seed=st.integers(0, 1000), clip=st.sampled_from([0.01, 0.05, 0.2]))
def test_weights_are_positive_finite_and_normalised(n, seed, clip):
    x, y = _biased(n, seed)
    p, w = propensity_weights(x, y, clip=clip)
    assert np.all(np.isfinite(w)) and np.all(w > 0)
    assert np.all((p >= clip - 1e-6) & (p <= 1 - clip + 1e-6))
    for value in (0, 1):
        assert w[y == value].mean() == pytest.approx(1.0, rel=1e-4)


def test_surface_features_shape_and_label_check():
    f = surface_features([A, "a red car"], ["a cat chases a dog in the park", "a red car parked"])
    assert f.shape == (2, 4) and np.all((f >= 0) & (f <= 1))
    with pytest.raises(ValueError, match="expected labels 0 .* and 1"):
        propensity_weights(f, np.array([1, 1]))


@pytest.mark.parametrize("name", ["surface", "dedup", "propensity", "semantic", "words", "blind"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"pipeline.filters.{name}"))
    assert result.attempted > 0 and result.failed == 0
