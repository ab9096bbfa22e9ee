"""The one run path every kind goes through; ``flows/generate.py`` wires it into a Prefect flow.

preflight -> start (templates, inputs) -> per block of sources (``output.block_sources`` input rows), for
each of the kind's stages: plan_stage (skip units already in raw parts) and generate_stage (its pending chunks
on the Ray engine pool, one raw part each) -> finalize (assemble, filter, split, publish shards, plan, plots,
card, manifest). Memory is bounded by a block, not by the dataset: a block's units and rows are Python objects,
the store's index of finished units and the filter stage's global columns are numbers (tens of bytes a unit).

Finalize reads only raw parts (and cached per-text scores), so it is deterministic and makes no LLM call;
``contrastgen filter`` reruns it on a copy of a dataset's raw parts. It walks the blocks twice: the first pass
scores each block's rows (:func:`pipeline.filters.score.score`), the global decisions are made on the
concatenated scores (:func:`pipeline.filters.stage.decide`), the second pass assembles each block again and
writes its decided rows to on-disk spools, which :func:`pipeline.shards.publish.publish` turns into shards. In a
run of several blocks each block's pass is a Ray task (:mod:`pipeline.run.blockwork`) and the driver merges.
Appending to a published dataset, rows the previous release decided keep their decision (see
:mod:`pipeline.shards.publish`): only new rows are filtered, beside the published ones.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import kinds
from pipeline.config import FilterConfig, RunConfig
from pipeline.engines.pool import EnginePool, ensure_ray
from pipeline.filters.plots import save_histograms
from pipeline.filters.score import Scored
from pipeline.filters.scorers import stage_scorers
from pipeline.filters.spill import ScoredSpill
from pipeline.filters.stage import Decisions, decide
from pipeline.kinds.base import Context, Kind, Stage, Tally, sampled
from pipeline.progress import Meter
from pipeline.records import RejectStage, Unit
from pipeline.run.blocks import (  # noqa: F401 (blocks: the flow walks them here)
    BlockOut,
    block_count,
    blocks,
    planned_blocks,
    score_block,
    spill_path,
    write_block,
)
from pipeline.run.blockwork import BlockWork, ray_up
from pipeline.run.common import Progress, Summary, Timing, part_size
from pipeline.run.cost import Cost, cost_report, spent_in
from pipeline.run.store import RunStore, store_of
from pipeline.run.stream import stream_parts
from pipeline.shards.card import Card, write_card
from pipeline.shards.publish import previous_release, publish, published_splits, settings_sha
from pipeline.shards.schema import REJECTED_SCHEMA, rejected_table
from pipeline.shards.writer import ShardInfo, Spool, read_shard

CARDS = Path(kinds.__file__).parent / "cards"
PLAN_SCHEMA = pa.schema([("unit_key", pa.string())])
SPOOL = ".finalize"  # the spools of a finalize in progress, under the dataset root (removed when it publishes)


def preflight(kind: Kind, cfg: RunConfig) -> None:
    """Checks before Ray and Prefect start: input and output (and what the kind's checks load, e.g. the negatives'
    spaCy parser), every template loads, the model is found (an embedded run: the bundled package or
    engine.model_path), the output folder may be written."""
    kind.check(cfg)
    kind.templates(cfg)
    cfg.engine.model_id()
    store_of(cfg, kind.name).preflight()


def start(kind: Kind, cfg: RunConfig) -> Context:
    """Templates loaded once (the text hashed into unit keys is the text rendered) and the inputs read (a sample
    of them where ``input.sample_rows`` is set)."""
    return Context(cfg, kind.templates(cfg), sampled(kind.read(cfg), cfg.input.sample_rows), raws=lambda name: [])


def chunk_units(kind: Kind, units: list[Unit], cfg: RunConfig) -> list[list[Unit]]:
    """Task-major chunks of the part size: a part holds one task's units where possible, so the engine batches
    them off one cached prefix. bench/generation.py uses this too, for a like-for-like baseline."""
    order = {t: i for i, t in enumerate(kind.task_order(cfg))}
    ordered = sorted(units, key=lambda u: order[u.task])
    size = part_size(cfg)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def plan_stage(kind: Kind, ctx: Context, store: RunStore, name: str) -> Stage:
    """A block's stage: its units (from the block's inputs and earlier stages' results) and the chunks of them
    not done yet."""
    units = kind.units(name, ctx)
    pending = _pending(units, store)
    ctx.stages[name] = Stage(
        frozenset(u.key for u in units), units, chunk_units(kind, pending, ctx.cfg), len(units) - len(pending)
    )
    return ctx.stages[name]


def _pending(units: list[Unit], store: RunStore) -> list[Unit]:
    """The units no raw part or given-up file holds yet."""
    return [u for u, d in zip(units, store.done([u.key for u in units]).tolist()) if not d]


def generate_stage(
    kind: Kind, ctx: Context, pool: EnginePool, store: RunStore, name: str, meter: Meter | None = None
) -> int:
    """Generate a planned stage's units not done yet on Ray Data part workers
    (:func:`pipeline.run.stream.stream_parts`),
    one raw part a chunk. The first failure is raised as itself once the stream stops (parts committed before it are
    kept: a retry or a rerun finds them done). Returns the units sent."""
    chunks = chunk_units(kind, _pending(ctx.stages[name].units, store), ctx.cfg)  # again: a retry finds its commits
    if chunks:
        stream_parts(kind, ctx, store, chunks, pool if pool.local is None else None, meter)
    return sum(len(c) for c in chunks)


def _published_counts(root: Path, shards: list[ShardInfo]) -> tuple[Counter, Counter, Counter]:
    """Rejections by stage, by reason, and generation and filter rejections by (task, reason), over every
    published rejected shard (the dataset's, all releases: an append's card counts what earlier releases
    rejected too)."""
    by_stage: Counter = Counter()
    by_reason: Counter = Counter()
    by_task: Counter = Counter()
    for s in shards:
        if s.split == "rejected" and s.rows:
            table = read_shard(root, s).select(["stage", "task", "reason"])
            for out, column in ((by_stage, "stage"), (by_reason, "reason")):
                for v in pc.value_counts(table.column(column)).to_pylist():
                    out[v["values"]] += v["counts"]
            decided = table.filter(
                pc.is_in(
                    table.column("stage"), value_set=pa.array([RejectStage.generation, RejectStage.filter], pa.string())
                )
            )
            for row in decided.group_by(["task", "reason"]).aggregate([([], "count_all")]).to_pylist():
                by_task[(row["task"], row["reason"])] += row["count_all"]
    return by_stage, by_reason, by_task


def finalize(
    kind: Kind,
    ctx: Context,
    store: RunStore,
    timing: Timing,
    run_id: str | None,
    progress: Progress | None = None,
    walk: Callable[[], Iterator[Context]] | None = None,
) -> Summary:
    """Assemble, filter, split and publish the planned units' results block by block (``walk``: the planned
    blocks, by default :func:`planned_blocks`); write the plan, plots, card and manifest. A run of several blocks
    on Ray does each block's passes on Ray tasks (:mod:`pipeline.run.blockwork`): the driver only merges."""
    cfg, root = ctx.cfg, store.root
    remote = walk is None and block_count(ctx) > 1 and ray_up()
    walk = walk or planned_blocks(kind, ctx, store)
    sha = settings_sha(cfg, kind.name, kind.schema.names, kind.assembly_settings(cfg))
    release = previous_release(root, sha)
    shutil.rmtree(root / SPOOL, ignore_errors=True)
    meter = Meter("filter", 2 * block_count(ctx), "block passes (score, then write)", kept_word="kept")
    if cfg.ray.scorers:
        ensure_ray(cfg.ray)
    fcfg, scorers = stage_scorers(cfg.filters_for(kind.name), cfg.engine, cfg.ray.scorers)
    work = BlockWork.of(kind, ctx, store, release) if remote else None
    assembled = root / SPOOL / "blocks"  # each block's assembled rows, from pass 1 to pass 2
    scored = (
        work.scores(assembled)
        if work and not cfg.ray.scorers
        else (
            score_block(kind, c, store, release, fcfg, scorers, spill_path(assembled, i)) for i, c in enumerate(walk())
        )
    )
    res = _decide(scored, root / SPOOL / "filter", fcfg, meter)
    spools = {split: Spool(root / SPOOL / f"{split}.arrow", kind.schema) for split in ("train", "test")}
    spools["rejected"] = Spool(root / SPOOL / "rejected.arrow", REJECTED_SCHEMA)
    spools["rejected"].write(rejected_table(ctx.inputs.rejects))
    plan_keys = Spool(root / SPOOL / "plan.arrow", PLAN_SCHEMA)
    outs = (
        work.writes(res, assembled)
        if work
        else (write_block(kind, cfg, spill_path(assembled, i), res.block(i)) for i in range(res.blocks))
    )
    w = _write_blocks(outs, spools, plan_keys, meter)
    meter.close()
    shards, published = publish(root, spools, cfg.output.rows_per_shard, sha, run_id, release.ids if release else None)
    splits = published_splits(shards)  # the dataset's rows and rejections: earlier releases' included
    by_stage, by_reason, w.tally.reasons = _published_counts(root, shards)
    progress = progress or Progress(w.units, 0, w.units)
    summary = Summary(
        out=str(root),
        inputs=ctx.inputs.count,
        input_rejected=len(ctx.inputs.rejects),
        units=w.units,
        generated=progress.generated,
        reused=progress.reused,
        kept=sum(splits.values()),
        rejected=by_stage[RejectStage.generation],
        positives=w.positives,
        filtered=by_stage[RejectStage.filter],
        splits=splits,
        rejected_by_reason=dict(sorted(by_reason.items())),
        startup_seconds=timing.startup_seconds,
        generation_seconds=timing.generation_seconds,
        tokens_out=w.tokens_out,
        plan_seconds=timing.plan_seconds,
        cost=cost_report(w.cost, spent_in((n, store.read_part(n)) for n in sorted(store.made)), cfg.engine.price),
    )
    plan = store.write_plan(plan_keys.tables())
    shutil.rmtree(root / SPOOL, ignore_errors=True)
    plots = save_histograms(res.histograms, root / "plots")
    write_card(
        root,
        Card(
            kind=kind.name,
            anchor=kind.anchor,
            positive_task=kind.positive_task,
            schema=kind.schema,
            tags=kind.tags,
            template=CARDS / kind.card_template,
            cfg=cfg,
            summary=summary,
            run_id=run_id,
            engine=w.engine or cfg.engine.kind,
            prompts=ctx.templates,
            shards=shards,
            raw_parts=store.part_infos(),
            plan=plan,
            published=published,
            funnel=res.funnel,
            filter_report=res.report,
            plots=plots,
            facts=kind.card(ctx, w.tally),
        ),
    )
    return summary


def _decide(scored: Iterator[Scored], folder: Path, fcfg: FilterConfig, meter: Meter | None = None) -> Decisions:
    """Pass 1: spill every block's scores to Arrow in ``folder`` as they come (each block's texts and vectors are
    dropped in the pass), then make the global decisions on them out of core."""
    spill = ScoredSpill(folder, len(fcfg.blind.scorers) if fcfg.blind.enabled else 0)
    for sc in scored:
        spill.add(sc)
        if meter is not None:
            meter.advance(1, rows=f"{spill.n} scored")
    return decide(spill, fcfg)


@dataclass
class _Written:
    """What the writing pass counted over the blocks (for the summary and the card)."""

    tally: Tally
    units: int = 0
    positives: int = 0
    tokens_out: int = 0
    engine: str | None = None
    cost: Cost = field(default_factory=Cost)


def _write_blocks(
    outs: Iterator[BlockOut], spools: dict[str, Spool], plan_keys: Spool, meter: Meter | None = None
) -> _Written:
    """Pass 2: append each block's rows, rejections and unit keys to the spools, in block order; add its counts."""
    w = _Written(Tally())
    for out in outs:
        for split in ("train", "test", "rejected"):
            spools[split].write(out.tables[split])
        plan_keys.write(out.tables["plan"])
        w.tally.merge(out.tally)
        w.positives += out.positives
        w.units += out.units
        w.tokens_out += out.tokens_out
        w.cost.merge(out.cost)
        w.engine = w.engine or out.engine
        if meter is not None:
            meter.advance(1, kept=out.kept, rejected=out.rejected)
    return w
