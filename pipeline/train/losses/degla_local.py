"""DeGLA's text-side local contrastive losses: each anchor against its own typed negatives.

Paper: Hu et al. 2025, "Decoupled Global-Local Alignment for Improving Compositional Understanding"
(DeGLA). Its local alignment contrasts a text with the LLM-made negatives of that very text, and anchors
the contrast on a frozen EMA-teacher embedding so the student cannot solve it by drifting away.

With candidates C_i = {p_i} + {n_ik} (the anchor's positive and its own K negatives, weights w_ik, 1 for
the positive), student embeddings a, p, n and the EMA teacher's anchor embedding t_i:

    L_anchor  = -1/B sum_i log softmax_c( s * cos(a_i, c) + log w_c )[p_i]
    L_teacher = -1/B sum_i log softmax_c( s * cos(t_i, c) + log w_c )[p_i]
    L = (L_anchor + L_teacher) / 2

No in-batch negatives: this term only asks "is the caption closer to its paraphrase than to its own
swapped / replaced / added versions", the fine-grained question the global MNRL dilutes.

Input contract: :class:`~pipeline.train.batch.Embedded` with ``teacher_anchor`` set.

Example:
    >>> import torch; from pipeline.train.batch import Embedded
    >>> a = torch.eye(2); n = -torch.eye(2)[:, None]; m = torch.ones(2, 1, dtype=torch.bool)
    >>> e = Embedded(a, a, n, m, torch.ones(2, 1), a, n, m, torch.ones(2, 1), 0, 20.0, teacher_anchor=a)
    >>> round(float(degla_local(e)), 6)
    0.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.train.batch import Embedded
from pipeline.train.losses import Loss
from pipeline.train.losses.mnrl import masked_log_weight


def local_ce(query: torch.Tensor, cand: torch.Tensor, log_w: torch.Tensor, scale: float) -> torch.Tensor:
    """Cross-entropy of each query [B, D] over its own candidates [B, 1+K, D], the first one the target."""
    logits = scale * torch.einsum("bd,bcd->bc", query, cand) + log_w  # [B, 1+K]
    return F.cross_entropy(logits, torch.zeros(query.shape[0], dtype=torch.long, device=query.device))


def own_candidates(target: torch.Tensor, e: Embedded) -> tuple[torch.Tensor, torch.Tensor]:
    """``target`` [B, D] first, then the anchor's own negatives, normalised [B, 1+K, D]; and their log-weights
    [B, 1+K] (the target weighs 1, padding is -inf)."""
    cand = F.normalize(torch.cat([target[:, None], e.negatives], dim=1), dim=-1)
    ones = torch.ones_like(e.neg_weight[:, :1])  # [B, 1]
    return cand, masked_log_weight(torch.cat([ones, e.neg_weight], 1), torch.cat([ones.bool(), e.neg_mask], 1))


def degla_local(e: Embedded) -> torch.Tensor:
    if e.teacher_anchor is None:
        raise ValueError("degla_local: expected the EMA teacher's anchor embeddings, got none")
    cand, log_w = own_candidates(e.positive, e)  # [B, 1+K, D], [B, 1+K]
    a = F.normalize(e.anchor, dim=-1)  # [B, D]
    t = F.normalize(e.teacher_anchor, dim=-1)  # [B, D]
    return (local_ce(a, cand, log_w, e.scale) + local_ce(t, cand, log_w, e.scale)) / 2


LOSS = Loss(degla_local, paper="DeGLA local text losses (Hu et al. 2025)", needs_teacher=True)
