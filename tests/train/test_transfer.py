"""Evaluation on data the generator never touched (issue 18): STS-format retention files, the transfer set's
scoring, the rule-negative baseline's groups."""

from __future__ import annotations

import json

import pytest

from bench.outside.rules import RULE_TYPES
from pipeline.cli import _parser, _train_overrides
from pipeline.errors import InputFileError
from pipeline.train.config import load_train_config
from pipeline.train.data import Group
from pipeline.train.evaluate import read_sts, retention_pairs

STS_LINES = [
    "main-captions\tMSRvid\t2012test\t0001\t5.000\tA man is playing a flute.\tA man plays the flute.",
    "main-captions\tMSRvid\t2012test\t0002\t0.500\tA cat is eating.\tA man is driving a car.\textra\tfields",
    "main-news\theadlines\t2013\t0003\t3.200\tStocks fell on Monday.\tShares dropped Monday.",
    "main-forum\tanswers\t2015\t0004\t1.0\tIt depends.\tThe sky is blue.",
]


def test_read_sts_reads_stsb_lines_and_jsonl(tmp_path):
    tsv = tmp_path / "sts-dev.csv"
    tsv.write_text("\n".join(STS_LINES) + "\n")
    pairs = read_sts(tsv)
    assert [p["score"] for p in pairs] == [5.0, 0.5, 3.2, 1.0]
    assert pairs[1] == {"sentence1": "A cat is eating.", "sentence2": "A man is driving a car.", "score": 0.5}
    js = tmp_path / "pairs.jsonl"
    js.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    assert read_sts(js) == pairs
    assert retention_pairs("check", tsv) == pairs[0::2] and retention_pairs("report", tsv) == pairs[1::2]


@pytest.mark.parametrize(
    "bad, line, field",
    [
        ("main\tMSRvid\t2012\t0005\t2.0\tonly six fields", 3, None),
        ("main\tMSRvid\t2012\t0005\tfive\tA dog.\tA cat.", 3, "score"),
        ("main\tMSRvid\t2012\t0005\t2.0\t \tA cat.", 3, "sentence1"),
    ],
)
def test_a_bad_sts_line_names_file_line_and_field(tmp_path, bad, line, field):
    f = tmp_path / "sts.csv"
    f.write_text("\n".join(STS_LINES[:2] + [bad] + STS_LINES[2:]) + "\n")
    with pytest.raises(InputFileError) as exc:
        read_sts(f)
    assert exc.value.line == line and exc.value.field == field and str(f) in str(exc.value)
    assert "expected" in str(exc.value)


def test_retention_flag_reaches_the_train_config():
    a = _parser().parse_args(["train", "d", "--out", "m", "--retention", "sts-dev.csv"])
    assert str(load_train_config(None, _train_overrides(a)).eval.retention) == "sts-dev.csv"
    assert load_train_config(None, _train_overrides(_parser().parse_args(["train", "d"]))).eval.retention is None


@pytest.mark.integration
def test_transfer_scores_and_rule_groups():
    from bench.outside.transfer import evaluate_transfer, rule_groups
    from pipeline.train.config import bundled_encoder
    from pipeline.train.run import load_encoder

    model = load_encoder(bundled_encoder(), "cpu")
    rows = [
        {
            "anchor": "A dog chases a cat on the grass.",
            "positive": "A dog runs after a cat on a lawn.",
            "negative": "The stock market closed lower today.",
            "neg_type": "replace_obj",
        },
        {
            "anchor": "A red bus parked by a white house.",
            "positive": "A red bus is parked near a white house.",
            "negative": "A red bus is parked near a white house.",
            "neg_type": "swap_att",
        },
    ]  # the positive itself: a tie
    scores = evaluate_transfer(model, rows)
    assert scores["replace_obj"].acc_positive == 100.0 and scores["swap_att"].acc_positive == 0.0
    assert scores["all"].rows == 2 and scores["all"].acc_positive == 50.0

    groups = [
        Group("A dog chases a cat on the grass.", "A dog runs after a cat.", ("x",), ("swap_obj",), (0.5,)),
        Group("A young man rides a brown horse near an old barn.", "A man on a horse.", ("y",), ("add_att",), (1.0,)),
        Group("Hello.", "Hi.", ("z",), ("swap_obj",), (1.0,)),
    ]  # no rule applies: dropped
    made = rule_groups(groups, seed=1)
    assert [g.anchor for g in made] == [g.anchor for g in groups[:2]]
    for g in made:
        assert g.negatives and set(g.types) <= set(RULE_TYPES) and g.anchor not in g.negatives
        assert g.weights == (1.0,) * len(g.negatives) and g.positive in ("A dog runs after a cat.", "A man on a horse.")
    assert "swap_obj" in made[0].types and made == rule_groups(groups, seed=1)  # deterministic
