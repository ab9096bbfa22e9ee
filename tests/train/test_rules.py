"""Rule-based (NegCLIP-style) negatives with the real spaCy model, on tiny inputs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from bench.outside.rules import RULE_TYPES, build_vocab, coco_transfer_set, load_parser, rule_negative, rule_negatives
from pipeline.errors import InputFileError

CAPTIONS = [
    "A dog chases a cat on the grass.",
    "A red car parked beside a small white dog.",
    "An old man riding a brown horse on the beach.",
    "A black cat sleeps on a wooden bench under an orange umbrella.",
    "A woman is holding a tennis racket near a young boy.",
    "Two people walking along the street with umbrellas.",
]


def test_swap_obj_swaps_two_nouns_and_keeps_the_rest():
    nlp = load_parser()
    doc = nlp("A dog chases a cat on the grass.")
    vocab = build_vocab([doc])
    outs = {rule_negative(doc, "swap_obj", vocab, random.Random(s)) for s in range(30)}
    assert "A cat chases a dog on the grass." in outs
    assert outs <= {
        "A cat chases a dog on the grass.",
        "A grass chases a cat on the dog.",
        "A dog chases a grass on the cat.",
    }


def test_rows_differ_from_caption_and_every_type_applies_somewhere():
    rows = rule_negatives(CAPTIONS)
    assert len(rows) == len(CAPTIONS) * len(RULE_TYPES)
    applied = [r for r in rows if r["reason"] is None]
    for r in applied:
        assert r["negative"] and r["negative"] != r["caption"]
        assert r["negative"].lower() != r["caption"].lower()
    assert {r["neg_type"] for r in applied} == set(RULE_TYPES)
    for r in rows:
        if r["reason"] is not None:
            assert r["reason"] == "rule_not_applicable" and r["negative"] is None
    # a caption with a single noun and no adjective cannot swap anything
    lone = rule_negatives(["A dog."], types=("swap_obj", "swap_att"))
    assert [r["reason"] for r in lone] == ["rule_not_applicable"] * 2


def test_swap_att_and_article_agreement():
    doc = load_parser()("An old man riding a brown horse on the beach.")
    out = rule_negative(doc, "swap_att", build_vocab([doc]), random.Random(0))
    assert out == "A brown man riding an old horse on the beach."


def test_replacements_come_from_the_vocab_and_keep_tags():
    nlp = load_parser()
    vocab = build_vocab(nlp.pipe(CAPTIONS))
    assert vocab.nouns["NN"]["dog"] == 2 and "umbrellas" in vocab.nouns["NNS"]
    assert {"red", "small", "white", "old", "brown", "black", "wooden"} <= set(vocab.adjectives)
    assert {"on", "under"} <= set(vocab.relations["prep"])
    doc = nlp("A dog chases a cat on the grass.")
    for s in range(10):
        out = rule_negative(doc, "replace_obj", vocab, random.Random(s))
        changed = set(out.rstrip(".").split()) - set(doc.text.rstrip(".").split())
        assert len(changed) >= 1 and changed <= set(" ".join(vocab.nouns["NN"]).split())


def test_deterministic_for_a_seed_and_independent_of_batch():
    a = rule_negatives(CAPTIONS, seed=3)
    assert a == rule_negatives(CAPTIONS, seed=3)
    vocab = build_vocab(load_parser().pipe(CAPTIONS))
    alone = rule_negatives(CAPTIONS[:2], vocab=vocab, seed=3)
    assert alone == a[: len(alone)]
    assert any(x != y for x, y in zip(a, rule_negatives(CAPTIONS, seed=4)))


def test_unknown_type_is_a_clear_error():
    doc = load_parser()("A dog.")
    with pytest.raises(ValueError, match="unknown rule negative type 'nope'"):
        rule_negative(doc, "nope", build_vocab([doc]), random.Random(0))


def _coco(path: Path, n: int = 6) -> Path:
    lines = []
    for i in range(n):
        caps = [CAPTIONS[i % len(CAPTIONS)], CAPTIONS[(i + 1) % len(CAPTIONS)], CAPTIONS[(i + 2) % len(CAPTIONS)]]
        lines.append(
            json.dumps({"file_name": f"COCO_train2014_{i:012d}.jpg", "captions": {"object": caps, "scene": ["x"]}})
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_coco_transfer_set_rows_and_exclude(tmp_path):
    path = _coco(tmp_path / "test.jsonl")
    rows = coco_transfer_set(path, images=4)
    images = sorted({r["image"] for r in rows})
    assert images == [f"COCO_train2014_{i:012d}.jpg" for i in range(4)]
    for r in rows:
        assert set(r) == {"image", "anchor", "positive", "negative", "neg_type"}
        assert r["anchor"] != r["positive"] and r["negative"] != r["anchor"] and r["neg_type"] in RULE_TYPES
    assert rows == coco_transfer_set(path, images=4)
    skip = frozenset({"COCO_train2014_000000000000.jpg", "COCO_train2014_000000000002.jpg"})
    kept = {r["image"] for r in coco_transfer_set(path, images=4, exclude=skip)}
    assert kept == {f"COCO_train2014_{i:012d}.jpg" for i in (1, 3, 4, 5)}


def test_coco_positive_is_a_different_string(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text(
        json.dumps({"file_name": "a.jpg", "captions": {"object": [CAPTIONS[0], CAPTIONS[0] + " ", CAPTIONS[1]]}})
        + "\n"
        + json.dumps({"file_name": "b.jpg", "captions": {"object": [CAPTIONS[2], CAPTIONS[2]]}})
        + "\n"
    )
    rows = coco_transfer_set(path)
    assert {r["image"] for r in rows} == {"a.jpg"} and {r["positive"] for r in rows} == {CAPTIONS[1]}


@pytest.mark.parametrize(
    "bad, field",
    [
        ('{"file_name": 3, "captions": {"object": ["a"]}}', "file_name"),
        ('{"file_name": "x.jpg", "captions": {"object": "a dog"}}', "captions.object"),
        ('{"file_name": "x.jpg", ', None),
    ],
)
def test_malformed_line_names_file_line_and_field(tmp_path, bad, field):
    path = _coco(tmp_path / "bad.jsonl", n=2)
    path.write_text(path.read_text() + bad + "\n")
    with pytest.raises(InputFileError) as e:
        coco_transfer_set(path)
    msg = str(e.value)
    assert str(path) in msg and "line 3" in msg and "expected" in msg and "Fix:" in msg
    assert e.value.line == 3 and e.value.field == field
