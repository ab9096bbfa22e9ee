"""EMA self-distillation: keep the student's embeddings of real captions near a slow EMA teacher's.

Paper: DeGLA (Hu et al. 2025) self-distillation with an EMA teacher (alpha = 0.9996) to keep general
ability while fine-tuning on negatives; the EMA teacher as in Tarvainen & Valpola 2017 (Mean Teacher).

With student embeddings of the anchors a_i and positives p_i, and the teacher's t^a_i, t^p_i:

    L = 1/(2B) sum_i [ (1 - cos(a_i, t^a_i)) + (1 - cos(p_i, t^p_i)) ]

Negatives are left free: they are the texts the model must learn to move.

Input contract: :class:`~pipeline.train.batch.Embedded` with ``teacher_anchor`` and ``teacher_positive``.

Example:
    >>> import torch; from pipeline.train.batch import Embedded
    >>> a = torch.eye(2); n = torch.zeros(2, 1, 2); m = torch.ones(2, 1, dtype=torch.bool)
    >>> e = Embedded(a, a, n, m, torch.ones(2, 1), a, n, m, torch.ones(2, 1), 0, 20.0, a, a)
    >>> float(ema_distill(e))
    0.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.train.batch import Embedded
from pipeline.train.losses import Loss


def ema_distill(e: Embedded) -> torch.Tensor:
    if e.teacher_anchor is None or e.teacher_positive is None:
        raise ValueError("ema_distill: expected the EMA teacher's anchor and positive embeddings, got none")
    cos_a = F.cosine_similarity(e.anchor, e.teacher_anchor, dim=-1)  # [B]
    cos_p = F.cosine_similarity(e.positive, e.teacher_positive, dim=-1)  # [B]
    return ((1 - cos_a) + (1 - cos_p)).mean() / 2


LOSS = Loss(
    ema_distill,
    paper="EMA self-distillation (DeGLA, Hu et al. 2025; Mean Teacher, Tarvainen & Valpola 2017)",
    needs_teacher=True,
)
