"""The training losses, one module each, named as the loss. A loss module declares ``LOSS``: a :class:`Loss` with
its function (the formula and the paper in the module's docstring), the paper the model card cites, and whether it
needs the EMA teacher. Adding a loss is adding its module: :data:`NAMES` lists the modules of this package
(without importing them, so reading a config imports no torch) and :func:`loss` loads one when it is used."""

from __future__ import annotations

import importlib
import operator
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from pipeline.train.batch import Embedded

NAMES: tuple[str, ...] = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))


@dataclass(frozen=True)
class Loss:
    fn: Callable[[Embedded], torch.Tensor]  # the batch's loss, a scalar
    paper: str  # what the model card cites
    needs_teacher: bool = False  # reads Embedded.teacher_anchor / teacher_positive (the trainer keeps an EMA copy)


def loss(name: str) -> Loss:
    """The loss called ``name`` (its module's ``LOSS``)."""
    if name not in NAMES:
        raise KeyError(f"loss {name!r}: expected one of {list(NAMES)}")
    declared = importlib.import_module(f"{__name__}.{name}").LOSS
    assert isinstance(declared, Loss), f"{__name__}.{name}.LOSS: expected a Loss, got {type(declared).__name__}"
    return declared


def combined(weights: dict[str, float]) -> Callable[[Embedded], tuple[torch.Tensor, dict[str, float]]]:
    """The weighted sum of the configured losses; also returns each term's value for the log."""
    active = {name: (w, loss(name).fn) for name, w in weights.items() if w > 0}

    def total(e: Embedded) -> tuple[torch.Tensor, dict[str, float]]:
        terms = {name: fn(e) for name, (_, fn) in active.items()}
        value = reduce(operator.add, [active[name][0] * t for name, t in terms.items()])  # config: >= 1 loss
        return value, {name: float(t.detach()) for name, t in terms.items()}

    return total
