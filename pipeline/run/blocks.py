"""A block's passes: what finalize does to one block of sources, in the driver or in a Ray task
(:mod:`pipeline.run.blockwork`). A block's units are a pure function of its input records, the templates and its
earlier stages' results, so a block is planned again wherever it is finalized. Pass 1 assembles its rows from its
raw parts once, scores them, and spills the assembled block to the run's spool (:func:`spill_path`); pass 2 reads
that back, applies the decisions and turns the rows into tables: a block is parsed, checked and (retrieval) mined
once per finalize, not once per pass. The price is disk, not memory: between the passes the spool holds every
block's assembled rows (their texts and provenance: 1.83x the raw parts' bytes at 10k and 100k units,
docs/results/throughput.md), on the output's file system; finalize removes them as pass 2 reads them, and the
spool when it ends."""

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.config import RunConfig
from pipeline.filters.score import Scored, score
from pipeline.filters.stage import Pairs, StageResult
from pipeline.kinds.base import Assembled, Context, Kind, Stage, Tally
from pipeline.records import RawResult, Rejection, RejectStage
from pipeline.run.common import finished
from pipeline.run.cost import Cost
from pipeline.run.store import RunStore
from pipeline.shards.publish import Release, split_key, split_of
from pipeline.shards.schema import rejected_table
from pipeline.shards.writer import atomically


def blocks(ctx: Context, store: RunStore) -> Iterator[Context]:
    """A context per block of ``output.block_sources`` input rows (one, empty, for no input), whose ``raws(stage)``
    are that block's stage results read from the store (only the parts that hold them)."""
    records, size = ctx.inputs.records, ctx.cfg.output.block_sources
    for lo in range(0, max(len(records), 1), size):
        block = replace(ctx, inputs=replace(ctx.inputs, records=records[lo : lo + size]), stages={})

        def raws(name: str, b: Context = block) -> list[RawResult]:
            return finished(store, sorted(b.stages[name].keys))[0]

        block.raws = raws
        yield block


def filter_rows(
    kind: Kind, rows: list, res: StageResult, pinned: int = 0, decided: frozenset[str] = frozenset()
) -> tuple[list, list[Rejection]]:
    """Apply the filter stage's decisions ``res`` on one block to its rows (row ``i`` is ``res``'s row ``i``).
    Kept rows carry the score columns; dropped rows become ``filter`` rejections naming the filter, the reason
    and the score. A dropped positive drops its rows, except in a kind with a ``positive_task`` (negatives), whose
    rows then lose only the positive (rejected once). The first ``pinned`` rows are published already: they stay.
    Rows in ``decided`` (an earlier release rejected them) only counted for the others (dedup, balancing): they
    are neither kept nor rejected again."""
    kept, rejects = [], []
    for i, r in enumerate(rows):
        if i >= pinned and r.id in decided:
            continue
        pos_drop = res.positive_drops.get(r.source_id)
        row = replace(
            r,
            surface_sim=float(res.surface_sim[i]),
            semantic_sim=float(res.semantic_sim[i]),
            propensity=float(res.propensity[i]),
            weight=float(res.weight[i]),
        )
        if kind.positive_task and pos_drop:
            row = replace(row, positive=None, positive_prompt_sha=None)
        elif k := res.positive_choice.get(
            r.source_id
        ):  # a better-worded candidate was kept (negatives.paraphrase_candidates)
            row = replace(row, positive=r.positive_alternatives[k - 1])
        d = res.drop(i) or (None if kind.positive_task else pos_drop)
        if d is None or i < pinned:
            kept.append(row)
        else:
            rejects.append(_rejection(kind, r, d, r.negative, kind.reject_task(r), r.provenance.prompt_sha))
    if kind.positive_task:
        first: dict[str, Any] = {}
        for r in rows:
            first.setdefault(r.source_id, r)
        for group in sorted(first):
            d = res.positive_drops.get(group)
            if d is not None:
                r = first[group]
                rejects.append(_rejection(kind, r, d, r.positive or "", kind.positive_task, r.positive_prompt_sha))
    return kept, rejects


def _pairs(kind: Kind, rows: list, cfg: RunConfig, pinned: int) -> Pairs:
    """The filter stage's view of a block's rows (anchor, positive, negative; one group per source; the kind's
    type column as the stratum)."""
    return Pairs(
        [r.id for r in rows],
        [kind.anchor_of(r) for r in rows],
        [r.positive for r in rows],
        [r.negative for r in rows],
        [r.source_id for r in rows],
        [kind.type_of(r) for r in rows],
        [split_of(split_key(r), cfg.output.test_fraction) for r in rows],
        pinned,
        [getattr(r, "positive_alternatives", ()) for r in rows],
    )


def _rejection(kind: Kind, r, d, text: str, task: str, prompt_sha: str | None) -> Rejection:
    return Rejection(
        stage=RejectStage.filter,
        reason=d.reason,
        detail=d.detail or f"{kind.anchor}: {kind.anchor_of(r)}",
        raw=text,
        source_id=r.source_id,
        task=task,
        prompt_sha=prompt_sha,
        model=r.provenance.model,
        seed=r.provenance.seed,
        filter=d.filter,
        score=d.score,
    )


def _over(ctx: Context, raws: list) -> Context:
    """``ctx`` whose ``raws(stage)`` come from ``raws`` (read once) instead of the store."""
    by_key = {r.unit_key: r for r in raws}
    return replace(ctx, raws=lambda name: [by_key[k] for k in sorted(ctx.stages[name].keys) if k in by_key])


@dataclass
class _Block:
    """One block's assembled rows (published ones first, then by id) and what finalize needs beside them."""

    keys: list[str]
    raws: list[RawResult]
    failed: list[Rejection]
    assembled: Assembled
    rows: list
    pinned: int
    decided: frozenset[str]
    cost: Cost  # what its units cost, by stage and task (valid and kept rows by type added in pass 2)


def _assemble(kind: Kind, ctx: Context, store: RunStore, release: Release | None) -> _Block:
    """Read a planned block's raw results (only the parts holding them), assemble its rows, and mark the rows a
    previous release decided (published: pinned first; rejected: ``decided``)."""
    keys = sorted(frozenset().union(*(st.keys for st in ctx.stages.values())))
    raws, failed = finished(store, keys)
    cost = Cost.of_units({k: name for name, st in ctx.stages.items() for k in st.keys}, raws, failed)
    decided: frozenset[str] = frozenset()
    if release is not None:
        old = [r for r, o in zip(raws, release.plan.has([r.unit_key for r in raws]).tolist()) if o]
        decided = frozenset(r.id for r in kind.assemble(_over(ctx, old), old).rows)
    ctx = _over(ctx, raws)
    assembled = kind.assemble(ctx, raws)
    rows = sorted(assembled.rows, key=lambda r: r.id)
    if release is not None:
        published = release.ids.has([r.id for r in rows]).tolist()
        rows = [r for r, p in zip(rows, published) if p] + [r for r, p in zip(rows, published) if not p]
        return _Block(keys, raws, failed, assembled, rows, sum(published), decided, cost)
    return _Block(keys, raws, failed, assembled, rows, 0, decided, cost)


def planned_blocks(kind: Kind, ctx: Context, store: RunStore) -> Callable[[], Iterator[Context]]:
    """The run's blocks, each planned again (its units are a pure function of its inputs, the templates and
    its earlier stages' results): finalize walks them without holding every block's units."""

    def walk() -> Iterator[Context]:
        for block in blocks(ctx, store):
            for name in kind.stages(ctx.cfg):
                units = kind.units(name, block)
                block.stages[name] = Stage(
                    frozenset(u.key for u in units), units, [], 0
                )  # a kind may assemble from them
            yield block

    return walk


def block_count(ctx: Context) -> int:
    """How many blocks :func:`blocks` yields."""
    return max(1, -(-len(ctx.inputs.records) // ctx.cfg.output.block_sources))


def spill_path(folder: Path, index: int) -> Path:
    """Where pass 1 leaves block ``index``'s assembled rows for pass 2 (in the run's spool, which finalize empties
    when it starts and when it ends: only this finalize's own pickles are ever read back)."""
    return Path(folder) / f"block-{index:06d}.pickle"


def score_block(kind: Kind, c: Context, store: RunStore, release: Release | None, fcfg, scorers, spill: Path) -> Scored:
    """Pass 1 of one planned block: its rows assembled and scored (the numbers the global decisions need); the
    assembled block is written to ``spill`` (:func:`spill_path`) for pass 2."""
    b = _assemble(kind, c, store, release)
    sc = score(_pairs(kind, b.rows, c.cfg, b.pinned), fcfg, scorers)
    scorers.forget()
    spill.parent.mkdir(parents=True, exist_ok=True)
    data = pickle.dumps(b, protocol=pickle.HIGHEST_PROTOCOL)
    atomically(spill, lambda tmp: tmp.write_bytes(data))  # a full disk: OutputWriteError naming the file
    return sc


@dataclass
class BlockOut:
    """Pass 2 of one block: its tables for the spools and what the summary and the card count of it."""

    tables: dict[str, pa.Table]  # train, test, rejected, plan
    tally: Tally
    units: int
    positives: int
    tokens_out: int
    engine: str | None
    kept: Counter
    rejected: Counter
    cost: Cost


def write_block(kind: Kind, cfg: RunConfig, spill: Path, block: StageResult) -> BlockOut:
    """Pass 2 of one block: its rows as pass 1 assembled them (read from ``spill``, then deleted) with its share
    of the decisions applied."""
    b: _Block = pickle.loads(spill.read_bytes())
    spill.unlink()
    kept, filter_rejects = filter_rows(kind, b.rows, block, b.pinned, b.decided)
    rejects = sorted(b.assembled.rejects + b.failed, key=lambda r: (r.unit_key or "", r.seed or 0)) + filter_rejects
    splits = [split_of(split_key(r), cfg.output.test_fraction) for r in kept]
    tables = {split: kind.table([r for r, sp in zip(kept, splits) if sp == split]) for split in ("train", "test")}
    tables["rejected"] = rejected_table(rejects)
    tables["plan"] = pa.table({"unit_key": pa.array(b.keys, pa.string())})
    drops = len({r.source_id for r in b.rows} & block.positive_drops.keys())
    tally = Tally()
    tally.add(kind.type_of, b.raws, b.failed, kept, splits, rejects, b.assembled.stats)
    b.cost.valid.update(map(kind.type_of, b.rows))
    for (row_type, _split), n in tally.kept.items():  # the card's kept count by type is the cost's: one count
        b.cost.kept[row_type] += n
    return BlockOut(
        tables,
        tally,
        len(b.keys),
        kind.positives(kept, b.raws, b.assembled, drops),
        sum(r.provenance.tokens_out for r in b.raws),
        b.raws[0].provenance.engine if b.raws else None,
        Counter(kind.reject_task(r) for r in kept),
        Counter(r.task or "?" for r in rejects),
        b.cost,
    )
