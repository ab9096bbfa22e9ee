"""What one training run loaded and found (:class:`TrainData`, :class:`TrainSummary`): plain records.

They live apart from :mod:`pipeline.train.run`, which builds them, so that :mod:`pipeline.train.report` and
:mod:`pipeline.train.card`, which print and write them, need not import ``run`` (which imports the card):
no import cycle. Both names stay importable from ``pipeline.train.run`` too.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from pipeline.train.data import Group
from pipeline.train.evaluate import EvalReport
from pipeline.train.trainer import TrainResult


@dataclass(frozen=True)
class TrainData:
    train: list[Group]
    val: list[Group]
    no_positive: int
    tests: dict[str, pa.Table]


@dataclass(frozen=True)
class TrainSummary:
    out: str
    data: TrainData
    result: TrainResult
    before: dict[str, EvalReport]
    after: dict[str, EvalReport]
