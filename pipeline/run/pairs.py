"""The steps of a sentence-pairs run; ``flows/pairs.py`` wires them into a Prefect flow.

Stages run in order, each planned from what the previous one left in the store, so a killed run resumes
at any stage with nothing lost or repeated: [seed (from-scratch mode)] -> entail + contradict -> judge ->
finalize (keep rule, filter, split, shards, card, manifest). Finalize reads only raw parts and the input.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pipeline.config import RunConfig
from pipeline.engines.pool import EnginePool
from pipeline.errors import ContrastgenError, InputFileError
from pipeline.filters.scorers import stage_scorers
from pipeline.filters.stage import Pairs, StageResult, run_stage
from pipeline.inputs import read_sentences
from pipeline.records import PairRow, RawResult, Rejection, SentenceRecord, Unit
from pipeline.run.common import (
    Summary,
    Timing,
    commit_part,
    part_size,
    finished,
    publish_tables,
    split_of,
)
from pipeline.run.store import RunStore, store_of
from pipeline.shards.card import write_pairs_card
from pipeline.shards.publish import published_splits
from pipeline.shards.schema import pairs_table, rejected_table
from pipeline.shards.writer import ShardInfo
from pipeline.tasks import pairs as task
from pipeline.tasks.templates import ChatTemplate

GENERATE = "generate"  # the stage of the entail and contradict units


@dataclass(frozen=True)
class Stage:
    """One stage's units and the chunks of them not generated yet (one raw part each)."""

    units: list[Unit]
    pending: list[list[Unit]]
    reused: int


def preflight(cfg: RunConfig) -> None:
    """Cheap checks before Ray and Prefect start: an input or topics, an output folder, templates load."""
    if cfg.output.dir is None:
        raise ContrastgenError("expected output.dir (--out), got none. Fix: pass --out DIR or set it in --config")
    if cfg.input.path is None and not cfg.pairs.topics:
        raise ContrastgenError("expected --input (sentences) or pairs.topics (from-scratch mode), got neither. "
                               "Fix: pass --input FILE, or --topics T1 T2 ...")
    if cfg.input.path is not None and not Path(cfg.input.path).exists():
        raise InputFileError(cfg.input.path, "file not found. Fix: check --input")
    task.templates_for(cfg)
    cfg.engine.model_id()  # the model is found (an embedded run: the bundled package or engine.model_path)
    store_of(cfg, "pairs").preflight()


def stage(units: list[Unit], cfg: RunConfig, store: RunStore) -> Stage:
    done = store.completed_keys()
    pending = sorted((u for u in units if u.key not in done), key=lambda u: u.task)  # one task per part where possible
    size = part_size(cfg)
    return Stage(units, [pending[i : i + size] for i in range(0, len(pending), size)], len(units) - len(pending))


def generate_part(pool: EnginePool, index: int, units: list[Unit], templates: dict[str, ChatTemplate], cfg: RunConfig,
                  store: RunStore) -> ShardInfo:
    requests = [task.render(u, cfg, templates) for u in units]
    return commit_part(pool, index, units, requests, [u.task for u in units], store)


def _raws(store: RunStore, units: list[Unit]) -> list[RawResult]:
    """The raw results of ``units`` (units the engine gave up on have none: finalize rejects them)."""
    return finished(store, {u.key for u in units})[0]


def input_sentences(cfg: RunConfig) -> tuple[list[SentenceRecord], list[Rejection]]:
    return read_sentences(cfg.input) if cfg.input.path is not None else ([], [])


def seeded_sentences(cfg: RunConfig, store: RunStore, seeds: Stage) -> tuple[list[SentenceRecord], list[Rejection]]:
    """From-scratch mode: the seed stage's valid distinct sentences (first ``input.limit``)."""
    sentences, rejects = task.seed_sentences(_raws(store, seeds.units))
    return (sentences[: cfg.input.limit] if cfg.input.limit else sentences), rejects


def candidates(store: RunStore, gen: Stage, templates: dict[str, ChatTemplate]):
    return task.candidates(_raws(store, gen.units), templates)


@dataclass(frozen=True)
class Plan:
    """Everything finalize needs: the anchors, every stage's units, the input side of the funnel."""

    sentences: list[SentenceRecord]
    input_rejects: list[Rejection]
    seed_rejects: list[Rejection]
    stages: dict[str, Stage]
    templates: dict[str, ChatTemplate]


def filter_rows(rows: list[PairRow], cfg: RunConfig) -> tuple[list[PairRow], list[Rejection], StageResult]:
    """The filter stage with ``filters.pairs``: anchor sentence, positive, negative; one group per sentence."""
    pairs = Pairs([r.id for r in rows], [r.anchor for r in rows], [r.positive for r in rows], [r.negative for r in rows],
                  [r.source_id for r in rows], ["contradiction"] * len(rows),
                  [split_of(r.source_id, cfg.output.test_fraction) for r in rows])
    fcfg = cfg.filters.pairs
    fcfg, scorers = stage_scorers(fcfg, cfg.engine)
    res = run_stage(pairs, fcfg, scorers)
    kept, rejects = [], []
    for i, r in enumerate(rows):
        d = res.drop(i) or res.positive_drops.get(r.source_id)  # each row has its own positive: its drop drops the row
        if d is None:
            kept.append(replace(r, surface_sim=float(res.surface_sim[i]), semantic_sim=float(res.semantic_sim[i]),
                                propensity=float(res.propensity[i]), weight=float(res.weight[i])))
        else:
            p = r.provenance
            rejects.append(Rejection(stage="filter", reason=d.reason, detail=d.detail or f"anchor: {r.anchor}", raw=r.negative,
                                     source_id=r.source_id, task="contradict", prompt_sha=p.prompt_sha, model=p.model,
                                     seed=p.seed, filter=d.filter, score=d.score))
    return kept, rejects, res


def finalize(cfg: RunConfig, store: RunStore, plan: Plan, timing: Timing, run_id: str | None) -> Summary:
    root = store.root
    units = [u for st in plan.stages.values() for u in st.units]
    raws, failed = finished(store, {u.key for u in units})  # every stage's raw parts, read once
    by_key = {r.unit_key: r for r in raws}
    cands, cand_rejects = task.candidates([by_key[u.key] for u in plan.stages[GENERATE].units if u.key in by_key], plan.templates)
    scores = {(u.source.id, u.source.role): (by_key[u.key].texts[0], by_key[u.key]) for u in plan.stages[task.JUDGE].units
              if u.key in by_key}  # a judge unit the engine gave up on leaves its pair unjudged (rejected as no_score)
    rows, judge_rejects, stats = task.assemble(plan.sentences, cands, scores, cfg)
    stats.seeds = len(plan.sentences) if task.SEED in plan.stages else 0
    rows, filter_rejects, fstage = filter_rows(sorted(rows, key=lambda r: r.id), cfg)
    by_split: dict[str, list[PairRow]] = {"train": [], "test": []}
    for r in rows:
        by_split[split_of(r.source_id, cfg.output.test_fraction)].append(r)
    gen_rejects = sorted(plan.seed_rejects + cand_rejects + judge_rejects + failed, key=lambda r: (r.unit_key or "", r.seed or 0))
    rejects = plan.input_rejects + gen_rejects + filter_rejects
    tables = {split: pairs_table(split_rows) for split, split_rows in by_split.items()}
    shards, published = publish_tables(cfg, "pairs", root, {**tables, "rejected": rejected_table(rejects)}, run_id)
    splits = published_splits(shards)  # the dataset's rows: earlier releases' included
    summary = Summary(
        out=str(root), inputs=len(plan.sentences) + len(plan.input_rejects) if cfg.input.path else len(cfg.pairs.topics),
        input_rejected=len(plan.input_rejects), units=len(units),
        generated=sum(len(c) for st in plan.stages.values() for c in st.pending),
        reused=sum(st.reused for st in plan.stages.values()), kept=sum(splits.values()), rejected=len(gen_rejects),
        positives=len(rows), filtered=len(filter_rejects), splits=splits,
        rejected_by_reason=dict(sorted(Counter(r.reason for r in rejects).items())),
        startup_seconds=timing.startup_seconds, generation_seconds=timing.generation_seconds,
        tokens_out=sum(r.provenance.tokens_out for r in raws),
    )
    plan_info = store.write_plan(frozenset(u.key for u in units))
    write_pairs_card(cfg, store, summary, asdict(stats), rows, raws, shards, plan.templates, run_id, fstage, plan_info, published)
    return summary
