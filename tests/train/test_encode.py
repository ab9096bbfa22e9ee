"""GradCache parity: cached loss and gradients equal the uncached ones (forward and backward)."""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline.train.config import TrainConfig
from pipeline.train.data import Group
from pipeline.train.run import load_encoder
from pipeline.train.trainer import Trainer

GROUPS = [
    Group(
        "a dog chases a cat",
        "a dog is chasing a cat",
        ("a cat chases a dog", "a dog chases a bird"),
        ("swap_obj", "replace_obj"),
        (1.0, 0.5),
    ),
    Group("a red car near a tree", "a red car parked by a tree", ("a blue car near a tree",), ("replace_att",), (1.0,)),
    Group(
        "two men ride horses",
        "two men riding horses",
        ("two horses ride men", "two men ride big horses", "two men ride"),
        ("swap_obj", "add_att", "replace_rel"),
        (1.0, 1.0, 2.0),
    ),
]

GROUPS4 = GROUPS + [
    Group(
        "a woman holds an umbrella",
        "a woman holding an umbrella",
        ("an umbrella holds a woman",),
        ("swap_obj",),
        (1.0,),
    )
]


def parity_config(chunk: int | None) -> TrainConfig:
    return TrainConfig(
        optim={"grad_cache_chunk": chunk},
        data={"max_negatives": 3},
        loss={"weights": {"mnrl": 1.0, "degla_local": 0.5, "ema_distill": 2.0, "mw_auc": 0.3}},
    )


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _run(tiny_model, chunk: int | None, train_mode: bool, seed: int = 3):
    cfg = parity_config(chunk)
    model = load_encoder(tiny_model, "cpu")
    model.train(train_mode)
    trainer = Trainer(cfg, model)
    torch.manual_seed(seed)
    loss, terms = trainer.step(GROUPS)
    return loss, terms, _grads(model)


@pytest.mark.parametrize("chunk", [1, 4, 7])
def test_grad_cache_matches_plain_forward_and_gradients(tiny_model, chunk):
    loss, terms, grads = _run(tiny_model, None, train_mode=False)
    c_loss, c_terms, c_grads = _run(tiny_model, chunk, train_mode=False)
    # float32: a text embedded alone (chunk 1, no padding) may differ from its padded batch by a few ULPs
    assert c_loss == pytest.approx(loss, rel=2e-6, abs=1e-6)
    assert c_terms == pytest.approx(terms, rel=2e-6, abs=1e-6)
    assert grads.keys() == c_grads.keys() and len(grads) > 10
    for name in grads:
        torch.testing.assert_close(c_grads[name], grads[name], atol=1e-6, rtol=1e-4, msg=name)


def test_grad_cache_replays_dropout(tiny_model):
    """With dropout on, the cached second pass must reuse the first pass's masks (replayed RNG)."""
    from pipeline.train import encode

    cfg_chunk = 4
    model = load_encoder(tiny_model, "cpu").train()
    twin = copy.deepcopy(model)
    texts = [t for g in GROUPS for t in (g.anchor, g.positive, *g.negatives)]

    def loss_of_flat(flat):
        return (flat @ flat.T).pow(2).sum(), {}

    torch.manual_seed(5)
    plain = float(encode.plain_step(model, texts, loss_of_flat, chunk=cfg_chunk)[0])
    torch.manual_seed(5)
    cached = float(encode.cached_step(twin, texts, loss_of_flat, chunk=cfg_chunk)[0])
    assert cached == pytest.approx(plain, rel=1e-6)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-4, msg=name)
    # and dropout is really on: a second plain pass with another seed gives another loss
    torch.manual_seed(6)
    other = float(encode.plain_step(model, texts, loss_of_flat, chunk=cfg_chunk)[0])
    assert other != pytest.approx(plain, rel=1e-6)
