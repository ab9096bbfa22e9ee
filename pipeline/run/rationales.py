"""The steps of a rationales run; ``flows/rationales.py`` wires them into a Prefect flow.

Same shape as the negatives run: plan (skip units already in raw parts) -> generate parts on the Ray
engine pool -> finalize (parse, vote, label, pair, filter, split, write shards, card, manifest). Finalize
reads only raw parts and the planned questions, so it is deterministic and makes no LLM call.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from pipeline.config import RunConfig
from pipeline.engines.pool import EnginePool
from pipeline.filters.scorers import stage_scorers
from pipeline.filters.stage import Pairs, StageResult, run_stage
from pipeline.inputs import read_questions
from pipeline.records import QuestionRecord, RationaleRow, Rejection, Unit
from pipeline.run.common import (
    Summary,
    Timing,
    check_input_output,
    commit_part,
    part_size,
    finished,
    publish_tables,
    split_of,
)
from pipeline.run.store import RunStore, store_of
from pipeline.shards.card import write_rationales_card
from pipeline.shards.publish import published_splits
from pipeline.shards.schema import rationales_table, rejected_table
from pipeline.shards.writer import ShardInfo
from pipeline.tasks import rationales as task
from pipeline.tasks.templates import ChatTemplate

MODE = "cot"  # provenance `mode` of every rationale


@dataclass(frozen=True)
class Plan:
    questions: list[QuestionRecord]
    input_rejects: list[Rejection]
    units: list[Unit]
    pending: list[list[Unit]]
    reused: int
    templates: dict[str, ChatTemplate]


def preflight(cfg: RunConfig) -> None:
    """Cheap checks before Ray and Prefect start: input and output given, the input exists, templates load."""
    check_input_output(cfg)
    task.templates_for(cfg)
    cfg.engine.model_id()  # the model is found (an embedded run: the bundled package or engine.model_path)
    store_of(cfg, "rationales").preflight()


def plan(cfg: RunConfig, store: RunStore) -> Plan:
    questions, rejects = read_questions(cfg.input, cfg.rationales.answer_kind)
    templates = task.templates_for(cfg)
    units = task.plan_units(questions, cfg, templates)
    done = store.completed_keys()
    pending = [u for u in units if u.key not in done]
    return Plan(questions, rejects, units, chunk_units(pending, cfg), len(units) - len(pending), templates)


def chunk_units(units: list[Unit], cfg: RunConfig) -> list[list[Unit]]:
    """Task-major chunks of ``units_per_part`` (a part holds one sampling setting where possible);
    bench/generation.py uses this too, for a like-for-like baseline."""
    order = task.task_names(cfg)
    ordered = sorted(units, key=lambda u: order.index(u.task))
    size = part_size(cfg)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def generate_part(pool: EnginePool, index: int, units: list[Unit], templates: dict[str, ChatTemplate], cfg: RunConfig,
                  store: RunStore) -> ShardInfo:
    requests = [task.render(u, cfg, templates) for u in units]
    return commit_part(pool, index, units, requests, [MODE] * len(units), store)


def filter_rows(rows: list[RationaleRow], cfg: RunConfig) -> tuple[list[RationaleRow], list[Rejection], StageResult]:
    """The filter stage with ``filters.rationales``: question as anchor, the pair's rationales as positive and
    negative, one group per question, ``neg_source`` as the stratum. A group whose positive fails the positive
    rules loses its rows (each row carries its own positive, so there is no row without one)."""
    pairs = Pairs([r.id for r in rows], [r.question for r in rows], [r.positive for r in rows], [r.negative for r in rows],
                  [r.source_id for r in rows], [r.neg_source for r in rows],
                  [split_of(r.source_id, cfg.output.test_fraction) for r in rows])
    fcfg = cfg.filters.rationales
    fcfg, scorers = stage_scorers(fcfg, cfg.engine)
    res = run_stage(pairs, fcfg, scorers)
    kept, rejects = [], []
    for i, r in enumerate(rows):
        row = replace(r, surface_sim=float(res.surface_sim[i]), semantic_sim=float(res.semantic_sim[i]),
                      propensity=float(res.propensity[i]), weight=float(res.weight[i]))
        d = res.drop(i) or res.positive_drops.get(r.source_id)
        if d is None:
            kept.append(row)
        else:
            p = r.provenance
            rejects.append(Rejection(stage="filter", reason=d.reason, detail=d.detail or f"question: {r.question}",
                                     raw=r.negative, source_id=r.source_id, task=r.neg_source, prompt_sha=p.prompt_sha,
                                     model=p.model, seed=p.seed, filter=d.filter, score=d.score))
    return kept, rejects, res


def finalize(cfg: RunConfig, store: RunStore, the_plan: Plan, timing: Timing, run_id: str | None) -> Summary:
    root = store.root
    keys = {u.key for u in the_plan.units}
    raws, failed = finished(store, keys)
    questions = {q.id: q for q in the_plan.questions}
    rows, gen_rejects, stats = task.assemble(raws, questions, cfg)
    gen_rejects = gen_rejects + failed
    rows, filter_rejects, stage = filter_rows(sorted(rows, key=lambda r: r.id), cfg)
    by_split: dict[str, list[RationaleRow]] = {"train": [], "test": []}
    for r in rows:
        by_split[split_of(r.source_id, cfg.output.test_fraction)].append(r)
    rejects = the_plan.input_rejects + sorted(gen_rejects, key=lambda r: (r.unit_key or "", r.seed or 0)) + filter_rejects
    tables = {split: rationales_table(split_rows) for split, split_rows in by_split.items()}
    shards, published = publish_tables(cfg, "rationales", root, {**tables, "rejected": rejected_table(rejects)}, run_id)
    splits = published_splits(shards)  # the dataset's rows: earlier releases' included
    summary = Summary(
        out=str(root), inputs=len(the_plan.questions) + len(the_plan.input_rejects),
        input_rejected=len(the_plan.input_rejects), units=len(keys), generated=sum(len(c) for c in the_plan.pending),
        reused=the_plan.reused, kept=sum(splits.values()), rejected=len(gen_rejects), positives=len({(r.source_id, r.positive) for r in rows}),
        filtered=len(filter_rejects), splits=splits,
        rejected_by_reason=dict(sorted(Counter(r.reason for r in rejects).items())),
        startup_seconds=timing.startup_seconds, generation_seconds=timing.generation_seconds,
        tokens_out=sum(r.provenance.tokens_out for r in raws),
    )
    plan_info = store.write_plan(frozenset(keys))
    write_rationales_card(cfg, store, summary, stats, rows, raws, shards, the_plan.templates, run_id, stage, plan_info, published)
    return summary
