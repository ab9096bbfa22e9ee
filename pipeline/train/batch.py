"""A batch of groups as tensors: the texts to encode, and the embeddings every loss reads.

Shapes: B anchors on this rank, G = B * world anchors across ranks, K negatives per anchor (padded,
``neg_mask`` says which are real), D embedding size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.train.data import Group


@dataclass(frozen=True)
class Layout:
    """Where each text of a batch sits in the flat list of texts that is encoded."""

    texts: list[str]  # anchors (B), positives (B), then the real negatives (M)
    neg_index: torch.Tensor  # [B, K] int64, index into the negatives block or -1 for padding
    neg_weight: torch.Tensor  # [B, K] float32, 0 for padding


def layout(groups: list[Group], k: int) -> Layout:
    negs: list[str] = []
    index = torch.full((len(groups), k), -1, dtype=torch.long)
    weight = torch.zeros((len(groups), k), dtype=torch.float32)
    for i, g in enumerate(groups):
        for j, (text, w) in enumerate(zip(g.negatives[:k], g.weights[:k])):
            index[i, j] = len(negs)
            weight[i, j] = w
            negs.append(text)
    texts = [g.anchor for g in groups] + [g.positive for g in groups] + negs
    return Layout(texts, index, weight)


@dataclass(frozen=True)
class Embedded:
    """Student (and teacher) embeddings of one batch, plus the candidates gathered from every rank."""

    anchor: torch.Tensor  # [B, D]
    positive: torch.Tensor  # [B, D]
    negatives: torch.Tensor  # [B, K, D], zeros where padded
    neg_mask: torch.Tensor  # [B, K] bool
    neg_weight: torch.Tensor  # [B, K]
    all_positive: torch.Tensor  # [G, D]
    all_negatives: torch.Tensor  # [G, K, D]
    all_neg_mask: torch.Tensor  # [G, K]
    all_neg_weight: torch.Tensor  # [G, K]
    offset: int  # this rank's anchors are rows offset .. offset+B of the gathered tensors
    scale: float
    teacher_anchor: torch.Tensor | None = None  # [B, D], no grad
    teacher_positive: torch.Tensor | None = None  # [B, D], no grad


def split_embeddings(flat: torch.Tensor, lay: Layout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """flat [2B + M, D] -> anchor [B, D], positive [B, D], negatives [B, K, D] (zeros where padded)."""
    b = lay.neg_index.shape[0]
    anchor, positive, negs = flat[:b], flat[b : 2 * b], flat[2 * b :]  # [B,D], [B,D], [M,D]
    mask = lay.neg_index >= 0  # [B, K]
    padded = torch.cat([negs, flat.new_zeros(1, flat.shape[1])])  # [M+1, D], last row is the pad
    negatives = padded[torch.where(mask, lay.neg_index, negs.shape[0])]  # [B, K, D]
    return anchor, positive, negatives
