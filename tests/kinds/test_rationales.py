"""Rationale task logic on hand-made raw results: labels, the keep/pair rule, rejections and quality."""

from __future__ import annotations

import pytest

from pipeline.config import RunConfig
from pipeline.kinds import rationales as task
from pipeline.records import Provenance, QuestionRecord, RawResult

CFG = RunConfig()
GOOD = "Tom has 3 apples and buys 2, so 3 + 2 = {}. The answer is {}."


def raw(qid: str, t: str, texts: list[str], finish: list[str] | None = None, seed: int = 100) -> RawResult:
    prov = Provenance("embedded", "m", "sha", "cot", 0.7, 0.95, 160, seed, 10, 50, 0.1)
    return RawResult(f"{qid}-{t}", qid, "Q?", None, t, tuple(texts), tuple(finish or ["stop"] * len(texts)), prov, "0")


def good(n: int) -> str:
    return GOOD.format(n, n)


def test_gold_label_pairs_every_negative_with_a_positive_and_rejects_invalid_samples():
    q = QuestionRecord("q1", "Tom has 3 apples and buys 2. How many?", "5")
    raws = [
        raw(
            "q1",
            "sampled",
            [good(5), good(6), good(5), "3 + 2 is", "I'm sorry, I cannot help."],
            ["stop", "stop", "stop", "length", "stop"],
        ),
        raw("q1", "adversarial", [good(9), good(5)], seed=200),
    ]
    rows, rejects, st = task.assemble(raws, {"q1": q}, CFG)
    assert sorted((r.neg_source, r.neg_answer, r.pos_answer) for r in rows) == [
        ("adversarial", "9", "5"),
        ("sampled_wrong", "6", "5"),
    ]
    assert {r.positive for r in rows} == {good(5)}  # both positives have the same text; each row has one
    assert sorted((r.reason, r.seed) for r in rejects) == [("refusal", 104), ("truncated", 103)]  # seed + sample index
    r = next(r for r in rows if r.neg_source == "adversarial")
    assert r.provenance.seed == 200 and r.label_source == "gold" and (r.votes_for_label, r.votes_total) == (2, 3)
    assert 0 <= r.neg_quality < r.pos_quality <= 1
    assert (st.label_gold, st.sampled_valid, st.sampled_correct, st.vote_correct, st.adversarial_correct) == (
        1,
        3,
        2,
        1,
        1,
    )


def test_majority_labels_a_question_without_gold_and_a_tie_labels_nothing():
    clear = QuestionRecord("q2", "?", None)
    tie = QuestionRecord("q3", "?", None)
    raws = [raw("q2", "sampled", [good(4), good(4), good(7)]), raw("q3", "sampled", [good(4), good(7)])]
    rows, rejects, st = task.assemble(raws, {"q2": clear, "q3": tie}, CFG)
    assert [(r.source_id, r.answer, r.label_source, r.neg_answer) for r in rows] == [("q2", "4", "majority", "7")]
    assert sorted(r.reason for r in rejects) == ["no_label", "no_label"] and st.no_label == 1


def test_no_positive_rejects_the_negatives_with_the_reason():
    q = QuestionRecord("q4", "?", "10")
    rows, rejects, st = task.assemble([raw("q4", "sampled", [good(4), good(7)])], {"q4": q}, CFG)
    assert rows == [] and [r.reason for r in rejects] == ["no_positive", "no_positive"] and st.no_positive == 1


@pytest.mark.parametrize(
    "text, finish, expected",
    [
        (good(5), "stop", "5"),
        ("short", "stop", ("too_short", "5 < 20 chars")),
        ("Let me think about the apples in the basket.", "stop", ("no_answer", "no number answer found")),
    ],
)
def test_parse_sample(text, finish, expected):
    assert task.parse_sample(text, finish, "number", (), CFG.rationales.min_chars) == expected


def test_units_render_with_their_own_sampling_and_choices_template():
    q = QuestionRecord("q5", "Where is milk kept {choices}?", "B", ("oven", "fridge"))
    templates = task.templates_for(CFG)
    units = task.plan_units([q], CFG, templates)
    assert [u.task for u in units] == ["sampled", "adversarial"] and len({u.key for u in units}) == 2
    reqs = [task.render(u, CFG, templates) for u in units]
    assert [(r.sampling.n, r.sampling.temperature, r.sampling.stop_at_newline) for r in reqs] == [
        (5, 0.7, False),
        (2, 1.2, False),
    ]
    assert reqs[0].messages[-1] == ("user", "Question: Where is milk kept {choices}?\nChoices: (A) oven (B) fridge")
