import pytest

from pipeline.text.edits import Candidate, Failure, parse_answer

CAP = "A cat sleeps on top of a suitcase."


@pytest.mark.parametrize(
    "text,fmt,reason",
    [
        ("", "swap", "empty"),
        ("I'm sorry, I can't help with that.", "swap", "refusal"),
        ("Sure! cat <-> suitcase", "swap", "chatter"),
        ("Here is the new caption: A dog.", "rewrite", "chatter"),
        ("cat <-> suitcase\nThis swaps them.", "swap", "multi_line"),
        ("cat and suitcase", "swap", "unparsable"),
        ("cat <-> suitcase", "replace", "unparsable"),
        ("dog <-> suitcase", "swap", "span_not_found"),
        ("cat <-> cat", "swap", "no_change"),
        ("cat -> Cat", "replace", "no_change"),
        ("ca -> dog", "replace", "span_not_found"),  # spans match whole words only
    ],
)
def test_rejections_have_reasons(text, fmt, reason):
    out = parse_answer(CAP, text, fmt)
    assert isinstance(out, Failure) and out.reason == reason


def test_truncated_and_newline_stopped_outputs_rejected():
    out = parse_answer(CAP, "A suitcase sleeps on top", "rewrite", finish_reason="length")
    assert isinstance(out, Failure) and out.reason == "truncated"
    out = parse_answer(CAP, "cat <-> suitcase\n", "swap", finish_reason="newline")
    assert isinstance(out, Failure) and out.reason == "multi_line"


def test_swap_applies_and_fixes_sentence_case():
    out = parse_answer(CAP, "cat <-> suitcase", "swap")
    assert out == Candidate("A suitcase sleeps on top of a cat.", "cat <-> suitcase")
    out = parse_answer("Dogs chase a cat.", "dogs <-> cat", "swap")
    assert isinstance(out, Candidate) and out.text == "Cat chase a dogs."


def test_articles_agree_after_an_edit():
    out = parse_answer("An owl perches on a branch at night.", "owl <-> branch", "swap")
    assert isinstance(out, Candidate) and out.text == "A branch perches on an owl at night."
    out = parse_answer("A dog sleeps on a couch.", "dog -> old dog", "replace")
    assert isinstance(out, Candidate) and out.text == "An old dog sleeps on a couch."


def test_replace_strips_quotes_and_keeps_rest():
    out = parse_answer(CAP, '"suitcase" -> "basket"', "replace")
    assert out == Candidate("A cat sleeps on top of a basket.", "suitcase -> basket")


def test_rewrite_returns_sentence():
    assert parse_answer(CAP, "A dog sleeps on a suitcase.", "rewrite") == Candidate("A dog sleeps on a suitcase.", "")
