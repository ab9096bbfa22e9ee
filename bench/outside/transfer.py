"""Evaluation on data the generator never touched, and the rule-based training baseline (issue 18).

- :func:`evaluate_transfer`: typed accuracy on a transfer set whose anchors and positives are human-written
  (two COCO captions of one image) and whose negatives are made by rules from a dependency parse
  (:func:`bench.outside.rules.coco_transfer_set`). The transfer accuracy is ``acc_positive``: the other human
  caption, standing in for the image, is closer to the true caption than to its perturbation (SugarCrepe's
  image-to-text choice with the image replaced by a caption of it; Hsieh et al. 2023, arXiv:2306.14610). The
  other direction (the anchor closer to a different human caption than to a one-word edit of itself) is
  near 0 for any encoder and is reported, not used.
- :func:`rule_groups`: the same training anchors and positives with NegCLIP-style rule negatives instead of
  the LLM's (Yuksekgonul et al. 2023, arXiv:2210.01936): the baseline LLM-made negatives have to beat.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from sentence_transformers import SentenceTransformer

from bench.outside.rules import RULE_TYPES, rule_negatives
from pipeline.errors import DatasetError
from pipeline.train.data import Group
from pipeline.train.evaluate import TypeScore, typed_scores


def evaluate_transfer(model: SentenceTransformer, rows: list[dict], batch_size: int = 64) -> dict[str, TypeScore]:
    """{neg_type: score, ..., "all": score} of ``model`` on transfer rows {anchor, positive, negative, neg_type};
    the transfer accuracy is each score's ``acc_positive``."""
    if not rows:
        raise DatasetError(
            "transfer set: expected rows {anchor, positive, negative, neg_type}, found none. "
            "Fix: build it from more images (coco_transfer_set(images=...))"
        )
    overall, per_type, _, _ = typed_scores(model, [{**r, "type": r["neg_type"]} for r in rows], batch_size)
    return {**{s.neg_type: s for s in per_type}, "all": overall}


def rule_groups(groups: list[Group], seed: int = 0, types: tuple[str, ...] = RULE_TYPES) -> list[Group]:
    """``groups`` with their negatives replaced by rule negatives of their anchors (every type that applies,
    weight 1); anchors no rule applies to are dropped. Replacement words come from the anchors themselves."""
    anchors = list(dict.fromkeys(g.anchor for g in groups))
    made: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in rule_negatives(anchors, seed=seed, types=types):
        if row["negative"] is not None:
            made[row["caption"]].append((row["negative"], row["neg_type"]))
    return [
        replace(
            g,
            negatives=tuple(n for n, _ in made[g.anchor]),
            types=tuple(t for _, t in made[g.anchor]),
            weights=(1.0,) * len(made[g.anchor]),
        )
        for g in groups
        if made[g.anchor]
    ]
