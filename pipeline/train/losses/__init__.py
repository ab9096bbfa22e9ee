"""The training losses, one module each, dispatched by :class:`~pipeline.train.config.LossName`."""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import reduce

import torch

from pipeline.train.batch import Embedded
from pipeline.train.config import LossName
from pipeline.train.losses.degla_local import degla_local
from pipeline.train.losses.ema_distill import ema_distill
from pipeline.train.losses.mnrl import mnrl
from pipeline.train.losses.mw_auc import mw_auc
from pipeline.train.losses.view_local import view_local

LOSSES: dict[LossName, Callable[[Embedded], torch.Tensor]] = {
    LossName.mnrl: mnrl,
    LossName.degla_local: degla_local,
    LossName.ema_distill: ema_distill,
    LossName.mw_auc: mw_auc,
    LossName.view_local: view_local,
}


def combined(weights: dict[LossName, float]) -> Callable[[Embedded], tuple[torch.Tensor, dict[str, float]]]:
    """The weighted sum of the configured losses; also returns each term's value for the log."""
    active = {name: w for name, w in weights.items() if w > 0}

    def loss(e: Embedded) -> tuple[torch.Tensor, dict[str, float]]:
        terms = {name: LOSSES[name](e) for name in active}
        total = reduce(operator.add, [active[name] * value for name, value in terms.items()])  # config: >= 1 loss
        return total, {name.value: float(value.detach()) for name, value in terms.items()}

    return loss
