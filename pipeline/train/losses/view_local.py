"""The local contrast asked from the other view's side: is the positive closer to the anchor than to the
anchor's own negatives?

Paper: DeGLA (Hu et al. 2025) and NegCLIP (Yuksekgonul et al. 2023) contrast an *image* with its caption and
the caption's hard negatives; SugarCrepe (Hsieh et al. 2023) scores exactly that choice. Text-only, the image's
stand-in is another view of the same content, the positive p_i (a paraphrase, or a second human caption),
and the candidates are the anchor a_i and its own K negatives n_ik (weights w_ik):

    L_student = -1/B sum_i log softmax_c( s * cos(p_i, c) + log w_c )[a_i],   c in {a_i} + {n_ik}
    L_teacher = same with the EMA teacher's positive embedding t^p_i as the query (when there is a teacher)
    L = (L_student + L_teacher) / 2,  or L_student alone without a teacher

:mod:`degla_local` asks the anchor to be far from near-copies of itself; here the query is a different text,
so the loss asks which edit of the anchor the other view still describes, the question a compositional
benchmark asks.

Input contract: :class:`~pipeline.train.batch.Embedded`; ``teacher_positive`` is used when set.

Example:
    >>> import torch; from pipeline.train.batch import Embedded
    >>> a = torch.eye(2); n = -torch.eye(2)[:, None]; m = torch.ones(2, 1, dtype=torch.bool)
    >>> e = Embedded(a, a, n, m, torch.ones(2, 1), a, n, m, torch.ones(2, 1), 0, 20.0)
    >>> round(float(view_local(e)), 6)
    0.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.train.batch import Embedded
from pipeline.train.losses import Loss
from pipeline.train.losses.degla_local import local_ce, own_candidates


def view_local(e: Embedded) -> torch.Tensor:
    cand, log_w = own_candidates(e.anchor, e)  # the anchor first, then its negatives: [B, 1+K, D], [B, 1+K]
    student = local_ce(F.normalize(e.positive, dim=-1), cand, log_w, e.scale)
    if e.teacher_positive is None:
        return student
    return (student + local_ce(F.normalize(e.teacher_positive, dim=-1), cand, log_w, e.scale)) / 2


LOSS = Loss(
    view_local,
    paper=(
        "local contrast from the positive's side (SugarCrepe's choice, Hsieh et al. 2023; NegCLIP, "
        "Yuksekgonul et al. 2023)"
    ),
)
