"""Answer extraction, gold answers and the vote: hand-made cases whose outcome is known."""

from __future__ import annotations

import json

import pytest

from pipeline.text.answers import (
    extract_answer,
    gold_answer,
    is_refusal,
    normalise_answer,
    vote,
)
from tests.conftest import SHARED


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3 + 4 = 7. The answer is 7.", "7"),
        ("She makes 9 * 2 = $18 every day.\n#### 18", "18"),
        ("The answer is $1,250.00", "1250"),
        ("So the answer is: **42**", "42"),
        ("He ends with 12 - 15 = -3 dollars. The answer is -3.", "-3"),
        ("Total: 2.50 + 0.50 = 3.00", "3"),
        ("It costs 5 dollars, then 6 dollars, so 11 in all", "11"),
        ("I do not know.", None),
    ],
)
def test_number_answers(text, expected):
    assert extract_answer(text, "number") == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A bank has security. The answer is (A).", "A"),
        ("Answer: c", "C"),
        ("A person would go to the (D) mall.", "D"),
        ("A revolving door is at a bank.", "A"),  # the article "A" is not a letter; the choice text is named
        ("It could be a bank or a library.", None),  # two choices named: no answer
    ],
)
def test_choice_answers(text, expected):
    assert extract_answer(text, "choice", ("bank", "library", "department store", "mall", "new york")) == expected


def test_normalise_and_gold_layouts():
    assert normalise_answer("007", "number") == "7" and normalise_answer("-0.0", "number") == "0"
    assert normalise_answer("0.50", "number") == "0.5" and normalise_answer("x", "number") is None
    assert gold_answer("Natalia sold 48/2 = 24 clips in May.\n#### 72", "number") == "72"
    assert gold_answer(51.0, "number") == "51" and gold_answer("1,000", "number") == "1000"
    assert gold_answer("library", "choice", ("bank", "library")) == "B"
    assert gold_answer("banana", "choice", ("bank", "library")) is None


def test_every_shared_gold_answer_parses():
    """GSM8K's '#### x' lines, SVAMP's floats and CommonsenseQA's letters all give a gold answer."""
    gsm = [json.loads(line) for line in (SHARED / "gsm8k" / "train.jsonl").open()][:500]
    assert len(gsm) == 500, "expected the first 500 GSM8K train rows"
    assert all(gold_answer(r["answer"], "number") is not None for r in gsm)
    svamp = json.loads((SHARED / "svamp" / "SVAMP.json").read_text())
    assert svamp, "expected SVAMP's problems"
    assert all(gold_answer(r["Answer"], "number") is not None for r in svamp)
    csqa = [json.loads(line) for line in (SHARED / "commonsenseqa" / "dev_rand_split.jsonl").open()][:300]
    assert len(csqa) == 300, "expected the first 300 CommonsenseQA dev rows"
    assert all(gold_answer(r["answerKey"], "choice", tuple(r["choices"]["text"])) == r["answerKey"] for r in csqa)


def test_vote_and_refusals():
    assert vote(["8", "7", "7", "8", None]) == ("8", {"8": 2, "7": 2})  # a tie goes to the answer seen first
    assert vote([None, None]) == (None, {})
    assert is_refusal("As an AI, I cannot do math.") and not is_refusal("I can add 2 and 2: the answer is 4.")
