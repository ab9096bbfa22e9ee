"""Each loss against its formula written out by hand, and the properties its docstring promises."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from pipeline.train.batch import Embedded, layout, split_embeddings
from pipeline.train.data import Group
from pipeline.train.losses import NAMES, combined
from pipeline.train.losses import loss as declared_loss
from pipeline.train.losses.degla_local import degla_local
from pipeline.train.losses.ema_distill import ema_distill
from pipeline.train.losses.mnrl import mnrl
from pipeline.train.losses.mw_auc import mw_auc
from pipeline.train.losses.view_local import view_local

B, K, D, S = 3, 2, 5, 20.0


def _embedded(seed: int = 0, mask=None, weight=None, teacher: bool = True) -> Embedded:
    g = torch.Generator().manual_seed(seed)
    a, p, n = torch.randn(B, D, generator=g), torch.randn(B, D, generator=g), torch.randn(B, K, D, generator=g)
    mask = torch.ones(B, K, dtype=torch.bool) if mask is None else mask
    weight = torch.ones(B, K) if weight is None else weight
    n = n * mask[..., None]
    t_a, t_p = (torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)) if teacher else (None, None)
    return Embedded(a, p, n, mask, weight, p, n, mask, weight, 0, S, t_a, t_p)


def _cos(x, y) -> float:
    return float(F.cosine_similarity(x, y, dim=0))


def test_mnrl_is_the_written_formula():
    e = _embedded(
        mask=torch.tensor([[True, False], [True, True], [True, True]]),
        weight=torch.tensor([[1.0, 1.0], [0.5, 2.0], [1.0, 1.0]]),
    )
    total = 0.0
    for i in range(B):
        num = math.exp(S * _cos(e.anchor[i], e.positive[i]))
        den = sum(math.exp(S * _cos(e.anchor[i], e.positive[j])) for j in range(B))
        den += sum(
            float(e.neg_weight[j, k]) * math.exp(S * _cos(e.anchor[i], e.negatives[j, k]))
            for j in range(B)
            for k in range(K)
            if e.neg_mask[j, k]
        )
        total += -math.log(num / den)
    assert float(mnrl(e)) == pytest.approx(total / B, rel=1e-5)


def test_zero_weight_equals_dropping_the_negative():
    w = torch.ones(B, K)
    w[1, 1] = 0
    mask = torch.ones(B, K, dtype=torch.bool)
    dropped = mask.clone()
    dropped[1, 1] = False
    for loss in (mnrl, mw_auc, degla_local):
        assert float(loss(_embedded(weight=w))) == pytest.approx(float(loss(_embedded(mask=dropped))), rel=1e-6), loss


def test_degla_local_uses_only_the_anchors_own_negatives_and_the_teacher():
    e = _embedded()
    total = 0.0
    for query in (e.anchor, e.teacher_anchor):
        for i in range(B):
            cands = [e.positive[i], *e.negatives[i]]
            logits = [S * _cos(query[i], c) for c in cands]
            total += -(logits[0] - math.log(sum(math.exp(x) for x in logits)))
    assert float(degla_local(e)) == pytest.approx(total / (2 * B), rel=1e-5)
    with pytest.raises(ValueError, match="teacher"):
        degla_local(_embedded(teacher=False))


def _view_term(e: Embedded, query) -> float:
    total = 0.0
    for i in range(B):
        logits = [S * _cos(query[i], e.anchor[i])]
        logits += [S * _cos(query[i], e.negatives[i, k]) + math.log(float(e.neg_weight[i, k])) for k in range(K)]
        total += -(logits[0] - math.log(sum(math.exp(x) for x in logits)))
    return total / B


def test_view_local_asks_the_positive_to_pick_the_anchor_over_the_anchors_negatives():
    e = _embedded(weight=torch.tensor([[1.0, 0.5], [2.0, 1.0], [1.0, 1.0]]))
    assert float(view_local(e)) == pytest.approx(
        (_view_term(e, e.positive) + _view_term(e, e.teacher_positive)) / 2, rel=1e-5
    )
    alone = _embedded(teacher=False)
    assert float(view_local(alone)) == pytest.approx(_view_term(alone, alone.positive), rel=1e-5)
    same = replace(alone, positive=alone.anchor)  # a positive that is the anchor picks it at once
    assert float(view_local(same)) < float(view_local(alone))


def test_ema_distill_is_zero_at_the_teacher_and_grows_away_from_it():
    e = _embedded()
    same = Embedded(
        *[
            getattr(e, f)
            for f in (
                "anchor",
                "positive",
                "negatives",
                "neg_mask",
                "neg_weight",
                "all_positive",
                "all_negatives",
                "all_neg_mask",
                "all_neg_weight",
                "offset",
                "scale",
            )
        ],
        teacher_anchor=e.anchor * 3,
        teacher_positive=e.positive,
    )
    assert float(ema_distill(same)) == pytest.approx(0.0, abs=1e-6)  # scale-free: cosine
    expected = sum(
        (1 - _cos(e.anchor[i], e.teacher_anchor[i])) + (1 - _cos(e.positive[i], e.teacher_positive[i]))
        for i in range(B)
    )
    assert float(ema_distill(e)) == pytest.approx(expected / (2 * B), rel=1e-5)


def test_mw_auc_is_the_written_formula_and_falls_as_the_positive_wins():
    e = _embedded()
    total = 0.0
    for i in range(B):
        pos = _cos(e.anchor[i], e.positive[i])
        others = [e.positive[j] for j in range(B) if j != i] + [e.negatives[j, k] for j in range(B) for k in range(K)]
        total += sum(math.log1p(math.exp(S * (_cos(e.anchor[i], c) - pos))) for c in others) / len(others)
    assert float(mw_auc(e)) == pytest.approx(total / B, rel=1e-5)
    closer = Embedded(
        *[getattr(e, f) for f in ("anchor",)],
        e.anchor.clone(),
        *[getattr(e, f) for f in ("negatives", "neg_mask", "neg_weight")],
        e.anchor.clone(),
        e.all_negatives,
        e.all_neg_mask,
        e.all_neg_weight,
        0,
        S,
    )
    assert float(mw_auc(closer)) < float(mw_auc(e))


def test_every_loss_module_declares_its_loss_and_combined_weights_them():
    assert NAMES == ("degla_local", "ema_distill", "mnrl", "mw_auc", "view_local")  # found by module, none imported
    declared = {name: declared_loss(name) for name in NAMES}
    assert all(d.fn.__name__ == name and d.paper for name, d in declared.items())
    assert {name for name, d in declared.items() if d.needs_teacher} == {"degla_local", "ema_distill"}
    with pytest.raises(KeyError, match="expected one of"):
        declared_loss("infonce")
    e = _embedded()
    total, terms = combined({"mnrl": 0.5, "ema_distill": 2.0, "mw_auc": 0.0})(e)
    assert set(terms) == {"mnrl", "ema_distill"}
    assert float(total) == pytest.approx(0.5 * float(mnrl(e)) + 2.0 * float(ema_distill(e)), rel=1e-6)


def test_layout_and_split_put_every_text_back_in_its_slot():
    groups = [
        Group("a", "pa", ("n1", "n2"), ("swap_obj", "add_att"), (1.0, 0.5)),
        Group("b", "pb", ("n3",), ("add_obj",), (2.0,)),
    ]
    lay = layout(groups, k=3)
    assert lay.texts == ["a", "b", "pa", "pb", "n1", "n2", "n3"]
    flat = torch.arange(len(lay.texts), dtype=torch.float32)[:, None].repeat(1, 2) + 1  # row i holds i+1
    anchor, positive, negatives = split_embeddings(flat, lay)
    assert anchor[:, 0].tolist() == [1, 2] and positive[:, 0].tolist() == [3, 4]
    assert negatives[:, :, 0].tolist() == [[5, 6, 0], [7, 0, 0]]
    assert lay.neg_weight.tolist() == [[1.0, 0.5, 0.0], [2.0, 0.0, 0.0]]


@pytest.mark.parametrize("name", ["mnrl", "degla_local", "ema_distill", "mw_auc", "view_local"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"pipeline.train.losses.{name}"))
    assert result.attempted > 0 and result.failed == 0
