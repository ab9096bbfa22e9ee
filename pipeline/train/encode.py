"""Encoding texts with a sentence-transformers model: with gradients, in chunks, or GradCache'd.

GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"):
1. embed every text without a graph, chunk by chunk, remembering the RNG state before each chunk;
2. compute the loss on those embeddings as leaves and backpropagate to them only;
3. re-embed chunk by chunk with a graph, the RNG state replayed (same dropout masks), and push the cached
   embedding gradients through. Peak memory is one chunk's activations, whatever the batch size, and
   loss and gradients equal the uncached computation (tests/train/test_encode.py checks both).
Both steps embed texts sorted by length, so each forward pads to similar lengths (less wasted compute).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import batch_to_device

LossOfFlat = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


def embed(model: SentenceTransformer, texts: list[str]) -> torch.Tensor:
    """[N, D] sentence embeddings of ``texts``, keeping the autograd graph when grad is enabled."""
    prepare = getattr(model, "preprocess", None) or model.tokenize  # sentence-transformers >= 6 renamed it
    return model(batch_to_device(prepare(texts), model.device))["sentence_embedding"]


PLAIN_CHUNK = 64  # texts per forward in the uncached step; the graph of all chunks is kept


def _chunks(texts: list[str], size: int) -> list[list[str]]:
    return [texts[i : i + size] for i in range(0, len(texts), size)]


def _by_length(texts: list[str]) -> tuple[list[str], torch.Tensor]:
    """Texts sorted by length (each chunk then pads to a similar length) and the permutation back."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    inverse = torch.empty(len(texts), dtype=torch.long)
    inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(texts))
    return [texts[i] for i in order], inverse


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@torch.no_grad()
def embed_frozen(model: SentenceTransformer, texts: list[str], chunk: int) -> torch.Tensor:
    """[N, D] embeddings without a graph (the teacher, evaluation), ``chunk`` texts per forward."""
    return torch.cat([embed(model, c) for c in _chunks(texts, chunk)])


def plain_step(model: SentenceTransformer, texts: list[str], loss_of_flat: LossOfFlat, chunk: int | None = None):
    """Embed with a graph, length-sorted chunks of ``chunk`` texts, compute the loss, backpropagate."""
    ordered, inverse = _by_length(texts)
    flat = torch.cat([embed(model, c) for c in _chunks(ordered, chunk or PLAIN_CHUNK)])[inverse]  # [N, D]
    loss, logs = loss_of_flat(flat)
    loss.backward()
    return loss.detach(), logs


def cached_step(model: SentenceTransformer, texts: list[str], loss_of_flat: LossOfFlat, chunk: int):
    """GradCache: the same loss and gradients as :func:`plain_step`, with one chunk's activations in memory."""
    ordered, inverse = _by_length(texts)
    parts = _chunks(ordered, chunk)
    states, cached = [], []
    with torch.no_grad():
        for part in parts:
            states.append(_rng_state(model.device))
            cached.append(embed(model, part))
    leaf = torch.cat(cached).requires_grad_()  # [N, D] in length order, a leaf
    loss, logs = loss_of_flat(leaf[inverse])
    loss.backward()
    assert leaf.grad is not None  # a leaf that requires grad, after backward
    end_state = _rng_state(model.device)
    for part, state, grad in zip(parts, states, leaf.grad.split([len(p) for p in parts])):
        _set_rng_state(state, model.device)
        embed(model, part).backward(grad)  # [n, D] . [n, D]: pushes d loss / d embedding into the weights
    _set_rng_state(end_state, model.device)
    return loss.detach(), logs
