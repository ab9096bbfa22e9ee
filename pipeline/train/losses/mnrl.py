"""InfoNCE / MultipleNegativesRankingLoss with typed hard negatives and per-row weights.

Paper: van den Oord et al. 2018 (InfoNCE); Henderson et al. 2017 "Efficient Natural Language Response
Suggestion for Smart Reply" (in-batch negatives, the sentence-transformers MNRL); hard negatives as in
Gao et al. 2021 (SimCSE) and Doveh et al. 2023 / Hsieh et al. 2023 (typed caption negatives).

For anchor a_i with positive p_i, in-batch positives p_j of every rank, and every anchor's typed
negatives n_jk with weight w_jk (the dataset's ``weight`` column, 1 when absent; 0 drops a negative):

    L = -1/B sum_i log( exp(s * cos(a_i, p_i)) /
                        (sum_j exp(s * cos(a_i, p_j)) + sum_jk w_jk exp(s * cos(a_i, n_jk))) )

with scale s = 20. A weight enters as log(w) added to its logit, so w = 1 everywhere is plain MNRL and
propensity weights (DebCSE, Miao et al. 2023) shrink or grow a negative's share of the denominator.

Input contract: :class:`~pipeline.train.batch.Embedded`; uses anchor, all_positive, all_negatives,
all_neg_mask, all_neg_weight, offset, scale.

Example:
    >>> import torch; from pipeline.train.batch import Embedded
    >>> a = torch.eye(2); n = -torch.eye(2)[:, None]  # each anchor has one opposite negative
    >>> e = Embedded(a, a, n, torch.ones(2, 1, dtype=torch.bool), torch.ones(2, 1), a, n,
    ...              torch.ones(2, 1, dtype=torch.bool), torch.ones(2, 1), 0, 20.0)
    >>> round(float(mnrl(e)), 6)
    0.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.train.batch import Embedded
from pipeline.train.losses import Loss


def masked_log_weight(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log(w) where the candidate is real and w > 0, -inf elsewhere (it leaves the softmax)."""
    safe = torch.where(mask & (weight > 0), weight, torch.ones_like(weight))
    return torch.where(mask & (weight > 0), safe.log(), torch.full_like(weight, float("-inf")))


def mnrl(e: Embedded) -> torch.Tensor:
    a = F.normalize(e.anchor, dim=-1)  # [B, D]
    p = F.normalize(e.all_positive, dim=-1)  # [G, D]
    n = F.normalize(e.all_negatives, dim=-1).flatten(0, 1)  # [G*K, D]
    to_pos = e.scale * a @ p.T  # [B, G]
    to_neg = e.scale * a @ n.T + masked_log_weight(e.all_neg_weight, e.all_neg_mask).flatten()  # [B, G*K]
    labels = torch.arange(a.shape[0], device=a.device) + e.offset  # [B]
    return F.cross_entropy(torch.cat([to_pos, to_neg], dim=1), labels)


LOSS = Loss(mnrl, paper="InfoNCE (van den Oord et al. 2018); MNRL (Henderson et al. 2017) with hard negatives")
