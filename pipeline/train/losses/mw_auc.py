"""MW/AUC loss: a smooth Wilcoxon-Mann-Whitney (AUC) surrogate over positive-minus-negative scores.

Paper: Yan et al. 2003, "Optimizing Classifier Performance via an Approximation to the
Wilcoxon-Mann-Whitney Statistic"; used for contrastive ranking as a pairwise softplus (logistic) loss,
e.g. Sun et al. 2020 "Circle Loss" (pairwise form). It asks every negative to score below the positive,
instead of InfoNCE's one softmax over all of them.

For anchor a_i, its positive p_i and every other candidate c (other anchors' positives, weight 1, and
all typed negatives n_jk, weight w_jk):

    L = 1/B sum_i  sum_c w_c softplus( s * (cos(a_i, c) - cos(a_i, p_i)) ) / sum_c w_c

Input contract: :class:`~pipeline.train.batch.Embedded`; uses anchor, positive, all_positive,
all_negatives, all_neg_mask, all_neg_weight, offset, scale.

Example:
    >>> import torch; from pipeline.train.batch import Embedded
    >>> a = torch.eye(2); n = -torch.eye(2)[:, None]; m = torch.ones(2, 1, dtype=torch.bool)
    >>> e = Embedded(a, a, n, m, torch.ones(2, 1), a, n, m, torch.ones(2, 1), 0, 20.0)
    >>> float(mw_auc(e)) < 1e-6
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.train.batch import Embedded
from pipeline.train.losses import Loss


def mw_auc(e: Embedded) -> torch.Tensor:
    a = F.normalize(e.anchor, dim=-1)  # [B, D]
    own = (a * F.normalize(e.positive, dim=-1)).sum(-1, keepdim=True)  # [B, 1]
    other_pos = a @ F.normalize(e.all_positive, dim=-1).T  # [B, G]
    negs = a @ F.normalize(e.all_negatives, dim=-1).flatten(0, 1).T  # [B, G*K]
    b = a.shape[0]
    pos_w = torch.ones_like(other_pos)  # [B, G]
    pos_w[torch.arange(b), torch.arange(b) + e.offset] = 0  # the own positive is not a negative
    neg_w = (e.all_neg_weight * e.all_neg_mask).flatten().expand(b, -1)  # [B, G*K]
    scores = torch.cat([other_pos, negs], 1)  # [B, G + G*K]
    weights = torch.cat([pos_w, neg_w], 1)  # [B, G + G*K]
    per_anchor = (weights * F.softplus(e.scale * (scores - own))).sum(1) / weights.sum(1).clamp_min(1e-12)
    return per_anchor.mean()


LOSS = Loss(mw_auc, paper="Wilcoxon-Mann-Whitney AUC surrogate (Yan et al. 2003)")
