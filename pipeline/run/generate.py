"""The one run path every kind goes through; ``flows/generate.py`` wires it into a Prefect flow.

preflight -> start (templates, inputs) -> for each of the kind's stages: plan_stage (skip units already in
raw parts) and generate_part per pending chunk on the Ray engine pool -> finalize (assemble, filter, split,
publish shards, plan, plots, card, manifest). Finalize reads only raw parts (and cached per-text scores), so
it is deterministic and makes no LLM call; ``contrastgen filter`` reruns it on a copy of a dataset's raw parts.
Appending to a published dataset, rows the previous release decided keep their decision (see
:mod:`pipeline.shards.publish`): only new rows are filtered, beside the published ones.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

from pipeline import kinds
from pipeline.config import RunConfig
from pipeline.engines.pool import EnginePool
from pipeline.filters.plots import save_histograms
from pipeline.filters.scorers import stage_scorers
from pipeline.filters.stage import Pairs, StageResult, run_stage
from pipeline.kinds.base import Context, Kind, Stage
from pipeline.records import Rejection, Unit
from pipeline.run.common import Summary, Timing, commit_part, finished, part_size
from pipeline.run.store import RunStore, store_of
from pipeline.shards.card import Card, write_card
from pipeline.shards.publish import previous_release, publish, published_splits, settings_sha, split_of
from pipeline.shards.schema import rejected_table
from pipeline.shards.writer import ShardInfo, read_shard

CARDS = Path(kinds.__file__).parent / "cards"


def preflight(kind: Kind, cfg: RunConfig) -> None:
    """Cheap checks before Ray and Prefect start: input and output, every template loads, the model is found
    (an embedded run: the bundled package or engine.model_path), the output folder may be written."""
    kind.check(cfg)
    kind.templates(cfg)
    cfg.engine.model_id()
    store_of(cfg, kind.name).preflight()


def start(kind: Kind, cfg: RunConfig, store: RunStore) -> Context:
    """Templates loaded once (the text hashed into unit keys is the text rendered) and the inputs read."""
    ctx = Context(cfg, kind.templates(cfg), kind.read(cfg), raws=lambda name: finished(store, set(ctx.stages[name].keys))[0])
    return ctx


def chunk_units(kind: Kind, units: list[Unit], cfg: RunConfig) -> list[list[Unit]]:
    """Task-major chunks of the part size: a part holds one task's units where possible, so the engine batches
    them off one cached prefix. bench/generation.py uses this too, for a like-for-like baseline."""
    order = {t: i for i, t in enumerate(kind.task_order(cfg))}
    ordered = sorted(units, key=lambda u: order[u.task])
    size = part_size(cfg)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def plan_stage(kind: Kind, ctx: Context, store: RunStore, name: str) -> Stage:
    """The stage's units (from the inputs and earlier stages' results) and the chunks of them not done yet."""
    units = kind.units(name, ctx)
    done = store.completed_keys()
    pending = [u for u in units if u.key not in done]
    ctx.stages[name] = Stage(frozenset(u.key for u in units), units, chunk_units(kind, pending, ctx.cfg), len(units) - len(pending))
    return ctx.stages[name]


def generate_part(kind: Kind, ctx: Context, pool: EnginePool, index: int, units: list[Unit], store: RunStore) -> ShardInfo | None:
    """Generate one chunk of units on the pool and commit it as one atomic raw part."""
    requests = [kind.render(u, ctx) for u in units]
    return commit_part(pool, index, units, requests, [kind.mode(u, ctx.cfg) for u in units], store)


def filter_rows(kind: Kind, rows: list, cfg: RunConfig, pinned: int = 0,
                decided: frozenset[str] = frozenset()) -> tuple[list, list[Rejection], StageResult]:
    """The filter stage with ``filters.<kind>`` on assembled rows (anchor, positive, negative; one group per
    source; the kind's type column as the stratum). Kept rows carry the score columns; dropped rows become
    ``filter`` rejections naming the filter, the reason and the score. A dropped positive drops its rows, except
    in a kind with a ``positive_task`` (negatives), whose rows then lose only the positive (rejected once). The
    first ``pinned`` rows are published already: they stay. Rows in ``decided`` (an earlier release rejected them)
    only count for the others (dedup, balancing): they are neither kept nor rejected again."""
    pairs = Pairs([r.id for r in rows], [getattr(r, kind.anchor) for r in rows], [r.positive for r in rows],
                  [r.negative for r in rows], [r.source_id for r in rows], [getattr(r, kind.type_column) for r in rows],
                  [split_of(r.source_id, cfg.output.test_fraction) for r in rows], pinned)
    fcfg, scorers = stage_scorers(getattr(cfg.filters, kind.name), cfg.engine)
    res = run_stage(pairs, fcfg, scorers)
    kept, rejects = [], []
    for i, r in enumerate(rows):
        if i >= pinned and r.id in decided:
            continue
        pos_drop = res.positive_drops.get(r.source_id)
        row = replace(r, surface_sim=float(res.surface_sim[i]), semantic_sim=float(res.semantic_sim[i]),
                      propensity=float(res.propensity[i]), weight=float(res.weight[i]))
        if kind.positive_task and pos_drop:
            row = replace(row, positive=None, positive_prompt_sha=None)
        d = res.drop(i) or (None if kind.positive_task else pos_drop)
        if d is None or i < pinned:
            kept.append(row)
        else:
            rejects.append(_rejection(kind, r, d, r.negative, kind.reject_task(r), r.provenance.prompt_sha))
    if kind.positive_task:
        first = {}
        for r in rows:
            first.setdefault(r.source_id, r)
        for group, d in sorted(res.positive_drops.items()):
            r = first[group]
            rejects.append(_rejection(kind, r, d, r.positive or "", kind.positive_task, r.positive_prompt_sha))
    return kept, rejects, res


def _rejection(kind: Kind, r, d, text: str, task: str, prompt_sha: str | None) -> Rejection:
    return Rejection(stage="filter", reason=d.reason, detail=d.detail or f"{kind.anchor}: {getattr(r, kind.anchor)}", raw=text,
                     source_id=r.source_id, task=task, prompt_sha=prompt_sha, model=r.provenance.model,
                     seed=r.provenance.seed, filter=d.filter, score=d.score)


def _published_rejections(root: Path, shards: list[ShardInfo]) -> list:
    """The stage and reason columns of every published rejected shard (the dataset's rejections, all releases)."""
    return [read_shard(root, s).select(["stage", "reason"]) for s in shards if s.split == "rejected" and s.rows]


def _over(ctx: Context, raws: list) -> Context:
    """``ctx`` whose ``raws(stage)`` come from ``raws`` (read once) instead of the store."""
    by_key = {r.unit_key: r for r in raws}
    return replace(ctx, raws=lambda name: [by_key[k] for k in sorted(ctx.stages[name].keys) if k in by_key])


def _decided(kind: Kind, ctx: Context, raws: list, plan: frozenset[str]) -> frozenset[str]:
    """Ids of the rows the previous release decided: the rows its planned units assemble to (published or
    rejected then; an append does not filter them again)."""
    old = [r for r in raws if r.unit_key in plan]
    return frozenset(r.id for r in kind.assemble(_over(ctx, old), old).rows)


def finalize(kind: Kind, ctx: Context, store: RunStore, timing: Timing, run_id: str | None) -> Summary:
    """Assemble, filter, split and publish the planned units' results; write the plan, plots, card and manifest."""
    cfg, root = ctx.cfg, store.root
    keys = frozenset().union(*(st.keys for st in ctx.stages.values()))
    raws, failed = finished(store, set(keys))  # every stage's raw parts, read once
    sha = settings_sha(cfg, kind.name)
    release = previous_release(root, sha)
    decided = _decided(kind, ctx, raws, release.plan) if release else frozenset()
    ctx = _over(ctx, raws)
    assembled = kind.assemble(ctx, raws)
    gen_rejects = sorted(assembled.rejects + failed, key=lambda r: (r.unit_key or "", r.seed or 0))
    rows = sorted(assembled.rows, key=lambda r: r.id)
    published_ids = release.ids if release else None
    pinned = [r for r in rows if published_ids and r.id in published_ids]  # published: first, and never dropped
    rows = pinned + [r for r in rows if not (published_ids and r.id in published_ids)]
    rows, filter_rejects, stage = filter_rows(kind, rows, cfg, len(pinned), decided)
    by_split: dict[str, list] = {"train": [], "test": []}
    for r in rows:
        by_split[split_of(r.source_id, cfg.output.test_fraction)].append(r)
    rejects = ctx.inputs.rejects + gen_rejects + filter_rejects
    tables = {split: kind.table(split_rows) for split, split_rows in by_split.items()}
    shards, published = publish(root, {**tables, "rejected": rejected_table(rejects)}, cfg.output.rows_per_shard, sha,
                                run_id, published_ids)
    splits = published_splits(shards)  # the dataset's rows and rejections: earlier releases' included
    published_rejects = _published_rejections(root, shards)
    by_stage = Counter(s for t in published_rejects for s in t.column("stage").to_pylist())
    summary = Summary(
        out=str(root), inputs=ctx.inputs.count, input_rejected=len(ctx.inputs.rejects), units=len(keys),
        generated=sum(len(c) for st in ctx.stages.values() for c in st.pending), reused=sum(st.reused for st in ctx.stages.values()),
        kept=sum(splits.values()), rejected=by_stage["generation"],
        positives=kind.positives(rows, raws, assembled, len(stage.positive_drops)), filtered=by_stage["filter"], splits=splits,
        rejected_by_reason=dict(sorted(Counter(r for t in published_rejects for r in t.column("reason").to_pylist()).items())),
        startup_seconds=timing.startup_seconds, generation_seconds=timing.generation_seconds,
        tokens_out=sum(r.provenance.tokens_out for r in raws), plan_seconds=timing.plan_seconds,
    )
    plan = store.write_plan(keys)
    plots = save_histograms(stage.histograms, root / "plots")
    write_card(root, Card(
        kind=kind.name, anchor=kind.anchor, schema=kind.schema, tags=kind.tags, template=CARDS / kind.card_template, cfg=cfg,
        summary=summary, run_id=run_id, engine=raws[0].provenance.engine if raws else cfg.engine.kind, prompts=ctx.templates,
        shards=shards, raw_parts=store.part_infos(), plan=plan, published=published, funnel=stage.funnel,
        filter_report=stage.report, plots=plots, facts=kind.card(ctx, rows, raws, rejects, assembled.stats),
    ))
    return summary
