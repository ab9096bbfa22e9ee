"""Finalize's per-block passes on Ray tasks, so the driver of a large run does no per-row work.

Finalize walks a run's blocks twice (:func:`pipeline.run.generate.finalize`): pass 1 assembles and scores each
block's rows and spills the assembled block, the global decisions are made on the spilled numbers, pass 2 reads
each assembled block back, applies its share of the decisions and writes its rows. In the driver both passes are
Python work a row (about 460 us a unit at 10k units, docs/results/throughput.md). Here each block's pass is a Ray
task: pass 1 plans the block from its input records (the unit keys are a pure function of them), reads its raw
results through the driver's index of ``raw/`` (shipped once through the object store: 20 bytes a unit),
assembles, spills the block to the run's spool (the output folder, which every node of a cluster already shares
for ``raw/``) and returns its numbers (:class:`~pipeline.filters.score.Scored`); pass 2 reads the spilled block
and returns tables (:class:`~pipeline.run.blocks.BlockOut`).
The driver consumes them in block order, so the spools, and so the shards, are byte-identical to a finalize in
the driver; a window of tasks in flight bounds its memory to a few blocks.

The tasks hold no CPU of their own in Ray's accounting (engine replicas may still hold every core; finalize
must not wait for them): the window, the cluster's CPUs, bounds them. Models a task loads (the spaCy parser,
the MiniLM scorer) are kept per worker process, and Ray reuses the processes. A run of one block, or a
``contrastgen filter`` (its own walk), stays in the driver: a worker would load the same models again for no
parallelism. With ``ray.scorers`` the scoring pass stays in the driver, which streams the texts to its Ray
Data scorers.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from pipeline.config import RunConfig
from pipeline.kinds.base import Context, Inputs, Kind
from pipeline.run.blocks import spill_path
from pipeline.shards.keys import FileIndex
from pipeline.shards.publish import Release


def ray_up() -> bool:
    return ray.is_initialized()


@dataclass
class BlockJob:
    """What every block task of one finalize needs (put once in the object store)."""

    kind: str
    cfg: RunConfig
    templates: dict[str, Any]
    root: str
    index: FileIndex
    release: Release | None


def _planned(job: BlockJob, records: list) -> tuple[Kind, Context, Any]:
    """The block of ``records``, planned (its stages' units) as :func:`pipeline.run.generate.planned_blocks` does."""
    from pipeline.kinds import kind_of
    from pipeline.run.blocks import planned_blocks
    from pipeline.run.store import RunStore

    kind = kind_of(job.kind)
    store = RunStore.reader(Path(job.root), job.index)
    ctx = Context(job.cfg, job.templates, Inputs(records, [], len(records)), raws=lambda name: [])
    [block] = list(planned_blocks(kind, ctx, store)())
    return kind, block, store


@functools.cache
def _scorers(fcfg_json: str, engine_json: str):
    """The filter stage's scorers of this process (their models load once per worker process)."""
    from pipeline.engines.config import EngineConfig
    from pipeline.filters.config import FilterConfig
    from pipeline.filters.scorers import stage_scorers

    return stage_scorers(FilterConfig.model_validate_json(fcfg_json), EngineConfig.model_validate_json(engine_json))


@ray.remote(num_cpus=0)
def _score(job: BlockJob, records: list, spill: Path):
    from pipeline.run.blocks import score_block

    kind, block, store = _planned(job, records)
    fcfg, scorers = _scorers(job.cfg.filters_for(kind.name).model_dump_json(), job.cfg.engine.model_dump_json())
    return score_block(kind, block, store, job.release, fcfg, scorers, spill)


@ray.remote(num_cpus=0)
def _write(job: BlockJob, spill: Path, decisions):
    from pipeline.kinds import kind_of
    from pipeline.run.blocks import write_block

    return write_block(kind_of(job.kind), job.cfg, spill, decisions)


@dataclass
class BlockWork:
    """A finalize's blocks as Ray tasks, their results in block order."""

    job: Any  # the BlockJob's object ref
    blocks: list[list]  # each block's input records
    window: int

    @classmethod
    def of(cls, kind: Kind, ctx: Context, store, release: Release | None) -> BlockWork:
        records, size = ctx.inputs.records, ctx.cfg.output.block_sources
        index = store.index
        index.files_of([])  # merged now: the task's copy needs no merge of its own
        job = ray.put(BlockJob(kind.name, ctx.cfg, ctx.templates, str(store.root), index, release))
        window = max(2, int(ray.cluster_resources().get("CPU", 2)))
        return cls(job, [records[lo : lo + size] for lo in range(0, len(records), size)], window)

    def _ordered(self, submit) -> Iterator:
        """``submit(i)`` for every block, at most ``window`` in flight, the results in block order."""
        pending: list = []
        for i in range(len(self.blocks)):
            pending.append(submit(i))
            if len(pending) >= self.window:
                yield ray.get(pending.pop(0))
        while pending:
            yield ray.get(pending.pop(0))

    def scores(self, folder: Path) -> Iterator:
        """Pass 1: each block's scores (its assembled rows left in ``folder``)."""
        return self._ordered(lambda i: _score.remote(self.job, self.blocks[i], spill_path(folder, i)))

    def writes(self, res, folder: Path) -> Iterator:
        """Pass 2: each block's tables and counts, given the decisions ``res`` and pass 1's rows in ``folder``."""
        return self._ordered(lambda i: _write.remote(self.job, spill_path(folder, i), res.block(i)))
