"""Reading contrastgen shards for training: grouping, batching, and clear errors on bad input."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import ConfigError, DatasetError
from pipeline.train.config import TrainConfig
from pipeline.train.data import (
    Group,
    batches,
    groups_from_table,
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
    assert groups[0].neg_types == ("swap_obj", "replace_obj") and groups[0].weights == (1.0, 1.0)
    assert groups[1].weights == (0.25,)
    capped, _ = groups_from_table(read_split(root, "train"), max_negatives=1)
    assert capped[0].negatives == ("a sofa on a dog",)


def test_not_a_dataset_names_what_was_expected(tmp_path):
    with pytest.raises(DatasetError, match="expected a contrastgen dataset folder.*no manifest.json"):
        read_split(tmp_path, "train")
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something/else"}))
    with pytest.raises(DatasetError, match="expected format 'contrastgen.negatives/1' or 'contrastgen.rationales/1' or 'contrastgen.pairs/1' or 'contrastgen.retrieval/1', found 'something/else'"):
        read_split(tmp_path, "train")


def test_missing_columns_name_the_shard_and_the_columns(tmp_path):
    root = write_dataset(tmp_path / "ds", {"train": [{"caption": "a", "negative": "b"}]})
    with pytest.raises(DatasetError, match=r"train-00000-of-00001.arrow: expected columns .* missing \['positive', 'neg_type', 'source_id'\]"):
        read_split(root, "train")


def test_empty_split_is_an_error_with_a_fix(tmp_path):
    root = write_dataset(tmp_path / "ds", {"train": ROWS, "test": []})
    with pytest.raises(DatasetError, match="expected rows in the 'test' split, found none"):
        read_split(root, "test")
    with pytest.raises(DatasetError, match="'test' split"):
        load_data(TrainConfig(data={"dirs": [root]}))


def test_base_that_is_not_a_sentence_transformers_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"expected a sentence-transformers model folder \(with modules.json\), found files \['config.json'\]"):
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
