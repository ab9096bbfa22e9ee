"""Reading contrastgen shards for training: grouping, batching, and clear errors on bad input."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import ConfigError, DatasetError
from pipeline.kinds import KINDS
from pipeline.kinds.base import TRAINING_OPTIONAL, TRAINING_REQUIRED
from pipeline.train.config import TrainConfig
from pipeline.train.data import (
    Group,
    batches,
    groups_from_table,
    pair_positives,
    read_split,
    split_groups,
)
from pipeline.train.run import load_data, load_encoder
from tests.train.conftest import row, write_dataset

ROWS = [
    row("a dog on a sofa", "a dog lying on a couch", "a sofa on a dog", "swap_obj", "1"),
    row("a dog on a sofa", "a dog lying on a couch", "a cat on a sofa", "replace_obj", "1"),
    row("a red bus", "a bus that is red", "a blue bus", "replace_att", "2", weight=0.25),
    row("a man with a hat", None, "a hat with a man", "swap_obj", "3"),
]


def test_groups_keep_each_captions_typed_negatives_and_weights(tmp_path):
    root = write_dataset(tmp_path / "ds", {"train": ROWS, "test": ROWS[:1]})
    groups, skipped = groups_from_table(read_split(root, "train"), max_negatives=8)
    assert skipped == 1  # no positive: cannot form a pair
    assert [g.anchor for g in groups] == ["a dog on a sofa", "a red bus"]
    assert groups[0].negatives == ("a sofa on a dog", "a cat on a sofa")
    assert groups[0].types == ("swap_obj", "replace_obj") and groups[0].weights == (1.0, 1.0)
    assert groups[1].weights == (0.25,)
    capped, _ = groups_from_table(read_split(root, "train"), max_negatives=1)
    assert capped[0].negatives == ("a sofa on a dog",)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_gives_the_one_training_layout(name):
    table = KINDS[name].as_training(KINDS[name].schema.empty_table())
    assert table.column_names[:5] == list(TRAINING_REQUIRED) and set(table.column_names[5:]) <= set(TRAINING_OPTIONAL)


def test_not_a_dataset_names_what_was_expected(tmp_path):
    with pytest.raises(DatasetError, match="expected a contrastgen dataset folder.*no manifest.json"):
        read_split(tmp_path, "train")
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something/else"}))
    with pytest.raises(
        DatasetError,
        match="expected format 'contrastgen.negatives/1' or 'contrastgen.rationales/1' or 'contrastgen.pairs/1' or "
        "'contrastgen.retrieval/1', found 'something/else'",
    ):
        read_split(tmp_path, "train")


def test_missing_columns_name_the_shard_and_the_columns(tmp_path):
    root = write_dataset(tmp_path / "ds", {"train": [{"caption": "a", "negative": "b"}]})
    with pytest.raises(
        DatasetError,
        match=r"train-00000-of-00001.arrow: expected columns that give the training layout's \['anchor', 'positive', "
        r"'negative', 'type', 'source_id'\], missing \['positive', 'type', 'source_id'\] \(the shard has \['caption', "
        r"'negative'\]\)\. Fix: train on shards written by `contrastgen generate negatives`",
    ):
        read_split(root, "train")


def test_empty_split_is_an_error_with_a_fix(tmp_path):
    root = write_dataset(tmp_path / "ds", {"train": ROWS, "test": []})
    with pytest.raises(DatasetError, match="expected rows in the 'test' split, found none"):
        read_split(root, "test")
    with pytest.raises(DatasetError, match="'test' split"):
        load_data(TrainConfig(data={"dirs": [root]}))


def test_base_that_is_not_a_sentence_transformers_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(
        ConfigError,
        match=r"expected a sentence-transformers model folder \(with modules.json\), found files \['config.json'\]",
    ):
        load_encoder(tmp_path, "cpu")
    with pytest.raises(ConfigError, match="no such folder"):
        load_encoder(tmp_path / "nope", "cpu")


def _group(i: int, anchor: str) -> Group:
    return Group(anchor, f"positive {i}", (f"negative {i}",), ("swap_obj",), (1.0,))


@settings(max_examples=60, deadline=None)
@given(anchors=st.lists(st.integers(0, 12), min_size=1, max_size=80), size=st.integers(1, 9), seed=st.integers(0, 5))
def test_batches_cover_every_group_once_without_duplicate_anchors(anchors, size, seed):
    groups = [_group(i, f"anchor {a}") for i, a in enumerate(anchors)]
    out = batches(groups, size, seed, epoch=0, drop_last=False)
    assert sorted(g.positive for b in out for g in b) == sorted(g.positive for g in groups)
    for b in out:
        assert 0 < len(b) <= size
        assert len({g.anchor for g in b}) == len(b)
    assert out == batches(groups, size, seed, epoch=0, drop_last=False)  # deterministic


def test_validation_split_is_deterministic_and_disjoint():
    groups = [_group(i, f"anchor {i}") for i in range(200)]
    train, val = split_groups(groups, 0.1)
    assert len(train) + len(val) == 200 and 5 < len(val) < 40
    assert not {g.anchor for g in train} & {g.anchor for g in val}
    assert split_groups(groups, 0.1) == (train, val)


def test_a_test_split_without_positives_cannot_be_scored(tmp_path):
    from pipeline.train.evaluate import evaluate_table

    root = write_dataset(tmp_path / "ds", {"test": [ROWS[3]]})
    with pytest.raises(DatasetError, match="expected rows with a paraphrase positive, found none of 1"):
        evaluate_table(None, read_split(root, "test"))


GROUPED = [  # two human captions of image A (the second has no paraphrase), one of image B, one ungrouped
    {**row("a dog on a sofa", "a dog lying on a couch", "a sofa on a dog", "swap_obj", "1", weight=1.0), "group": "A"},
    {**row("a dog on a sofa", "a dog lying on a couch", "a cat on a sofa", "replace_obj", "1"), "group": "A"},
    {**row("a brown dog rests on a couch", None, "a couch rests on a brown dog", "swap_obj", "2"), "group": "A"},
    {**row("a red bus", None, "a blue bus", "replace_att", "3"), "group": "B"},
    {**row("a man with a hat", "a man wearing a hat", "a hat with a man", "swap_obj", "4"), "group": None},
]


def test_the_captions_of_a_group_are_positives_of_each_other_and_negatives_never_are(tmp_path):
    root = write_dataset(tmp_path / "ds", {"train": GROUPED})
    groups, skipped = groups_from_table(read_split(root, "train"), max_negatives=8)
    by = {g.anchor: g for g in groups}
    assert skipped == 1 and "a red bus" not in by  # alone in its group and no paraphrase: no pair
    assert by["a dog on a sofa"].positives == (
        "a dog lying on a couch",
        "a brown dog rests on a couch",
    )  # paraphrase first
    assert by["a brown dog rests on a couch"].positives == ("a dog on a sofa",)  # no paraphrase: its group's view
    assert by["a brown dog rests on a couch"].positive == "a dog on a sofa"
    assert by["a man with a hat"].positives == ("a man wearing a hat",) and by["a man with a hat"].group is None
    negatives = {n for g in groups for n in g.negatives}
    assert not negatives & {p for g in groups for p in g.positives}
    assert {g.key for g in groups} == {"A", "a man with a hat"}


def test_epochs_pair_each_anchor_with_its_positives_in_turn():
    g = Group("a", "p0", ("n",), ("swap_obj",), (1.0,), positives=("p0", "p1", "p2"), group="A")
    seen = [pair_positives([g], 1, seed=0, epoch=e)[0].positive for e in range(3)]
    assert sorted(seen) == ["p0", "p1", "p2"]  # three epochs, each positive once
    two = pair_positives([g], 2, seed=0, epoch=0)
    assert len(two) == 2 and len({x.positive for x in two}) == 2 and all(x.negatives == ("n",) for x in two)
    assert len(pair_positives([g], 5, seed=0, epoch=0)) == 3  # never more copies than positives
    plain = Group("b", "q", ("n",), ("swap_obj",), (1.0,))
    assert pair_positives([plain], 2, seed=0, epoch=3)[0] is plain  # ungrouped data trains as before, not copied
    made: dict = {}
    plans = [pair_positives([g], 1, 0, e, made) for e in range(9)]
    assert len({id(x) for p in plans for x in p}) == 3  # nine epochs, one object per positive


def test_a_batch_never_holds_two_anchors_of_one_group():
    groups = [Group(f"a{i}", f"p{i}", (), (), (), positives=(f"p{i}",), group=f"g{i % 3}") for i in range(12)]
    out = batches(pair_positives(groups, 1, 0, 0), batch_size=3, seed=0, epoch=0, drop_last=False)
    assert sorted(g.anchor for b in out for g in b) == sorted(g.anchor for g in groups)
    assert all(len({g.group for g in b}) == len(b) for b in out)


def test_validation_takes_whole_groups():
    groups = [Group(f"a{i}", f"p{i}", (), (), (), group=f"g{i % 10}") for i in range(200)]
    train, val = split_groups(groups, 0.3)
    assert val and not {g.group for g in train} & {g.group for g in val}
