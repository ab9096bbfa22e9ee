from hypothesis import given
from hypothesis import strategies as st

from pipeline.text.structure import (
    check_shapes,
    is_insertion,
    is_permutation,
    is_replace_span,
    words,
)

WORD = st.text(alphabet="abcdefghij", min_size=1, max_size=5)
SENT = st.lists(WORD, min_size=2, max_size=12, unique=True)


@given(SENT, st.data())
def test_swapping_two_words_is_a_permutation_not_a_replace_or_insertion(src, data):
    i, j = sorted(data.draw(st.lists(st.integers(0, len(src) - 1), min_size=2, max_size=2, unique=True)))
    dst = list(src)
    dst[i], dst[j] = dst[j], dst[i]
    assert is_permutation(src, dst)
    assert not is_insertion(src, dst)


@given(SENT, st.data(), st.lists(st.text(alphabet="klmnop", min_size=1, max_size=4), min_size=1, max_size=3))
def test_replacing_one_span_is_a_replace(src, data, new):
    i = data.draw(st.integers(0, len(src) - 1))
    j = data.draw(st.integers(i + 1, len(src)))
    dst = src[:i] + new + src[j:]
    assert is_replace_span(src, dst)
    assert not is_permutation(src, dst) and not is_insertion(src, dst)


@given(SENT, st.data(), st.lists(st.text(alphabet="klmnop", min_size=1, max_size=4), min_size=1, max_size=3))
def test_inserting_words_is_an_insertion_not_a_replace(src, data, new):
    i = data.draw(st.integers(0, len(src)))
    dst = src[:i] + new + src[i:]
    assert is_insertion(src, dst)
    assert not is_replace_span(src, dst) and not is_permutation(src, dst)


@given(SENT)
def test_identity_matches_no_negative_shape(src):
    assert not (is_permutation(src, src) or is_replace_span(src, src) or is_insertion(src, src))


def test_two_separate_replacements_are_not_one_span():
    assert not is_replace_span(words("a red car near a blue house"), words("a green car near a white house"))


def test_article_agreement_does_not_change_shape():
    assert check_shapes("insertion", ["A dog sleeps."], ["An old dog sleeps."]) == [True]
    assert check_shapes("permutation", ["An owl on a branch."], ["A branch on an owl."]) == [True]


def test_mismatched_type_detected_on_sentences():
    src = ["A dog sleeps on a red couch."] * 3
    cands = ["A couch sleeps on a red dog.", "A cat sleeps on a red couch.", "A small dog sleeps on a red couch."]
    assert check_shapes("permutation", src, cands) == [True, False, False]
    assert check_shapes("replace_span", src, cands) == [False, True, False]
    assert check_shapes("insertion", src, cands) == [False, False, True]
