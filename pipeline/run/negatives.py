"""The steps of a negatives run; ``flows/negatives.py`` wires them into a Prefect flow.

load_inputs -> plan (skip units already in raw parts) -> generate_part (one per chunk of pending units,
on the Ray engine pool) -> finalize (parse, validate, filter, split, write shards, card, manifest).
Finalize reads only raw parts (and cached per-text scores), so it is deterministic and makes no LLM
call; ``contrastgen filter`` reruns it on a copy of a finished dataset's raw parts with other filters.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from pipeline.config import RunConfig
from pipeline.engines.pool import EnginePool
from pipeline.filters.scorers import stage_scorers
from pipeline.filters.stage import Pairs, StageResult, run_stage
from pipeline.inputs import read_captions
from pipeline.records import (
    CaptionRecord,
    NegativeRow,
    Rejection,
    Unit,
)
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
from pipeline.shards.card import write_card_and_manifest
from pipeline.shards.publish import published_splits
from pipeline.shards.schema import negatives_table, rejected_table
from pipeline.shards.writer import ShardInfo
from pipeline.tasks import negatives as task
from pipeline.tasks.templates import Template


@dataclass(frozen=True)
class Plan:
    captions: list[CaptionRecord]
    input_rejects: list[Rejection]
    units: list[Unit]
    pending: list[list[Unit]]  # chunks of units still to generate, one raw part each
    reused: int
    templates: dict[str, Template]  # loaded once: the text hashed into unit keys is the text rendered

    def inventory(self) -> Inventory:
        return Inventory(len(self.captions) + len(self.input_rejects), self.input_rejects,
                         frozenset(u.key for u in self.units), sum(len(c) for c in self.pending), self.reused, self.templates)


@dataclass(frozen=True)
class Inventory:
    """What finalize needs to know besides the raw parts: the planned units and the input side of the funnel."""

    inputs: int
    input_rejects: list[Rejection]
    unit_keys: frozenset[str]
    generated: int
    reused: int
    templates: dict[str, Template]


def preflight(cfg: RunConfig) -> None:
    """Cheap checks before Ray and Prefect start: the input exists, every template loads, the model is found."""
    check_input_output(cfg)
    task.templates_for(cfg)
    cfg.engine.model_id()  # the model is found (an embedded run: the bundled package or engine.model_path)
    store_of(cfg, "negatives").preflight()


def chunk_units(units: list[Unit], cfg: RunConfig) -> list[list[Unit]]:
    """Task-major chunks of ``units_per_part``: a part holds one template's units where possible, so the
    engine batches them off one cached prefix. bench/generation.py uses this too, for a like-for-like baseline."""
    order = {t: i for i, t in enumerate(task.task_names(cfg))}
    ordered = sorted(units, key=lambda u: order[u.task])
    size = part_size(cfg)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def plan(cfg: RunConfig, store: RunStore) -> Plan:
    captions, rejects = read_captions(cfg.input)
    templates = task.templates_for(cfg)
    units = task.plan_units(captions, cfg, templates)
    done = store.completed_keys()
    pending = [u for u in units if u.key not in done]
    return Plan(captions, rejects, units, chunk_units(pending, cfg), len(units) - len(pending), templates)


def generate_part(pool: EnginePool, index: int, units: list[Unit], templates: dict[str, Template], cfg: RunConfig,
                  store: RunStore) -> ShardInfo:
    """Generate one chunk of units on the pool and commit it as one atomic raw part."""
    requests = [task.render(u, templates[u.task], task.mode_for(u.task, cfg), cfg) for u in units]
    return commit_part(pool, index, units, requests, [task.mode_for(u.task, cfg) for u in units], store)


def filter_rows(rows: list[NegativeRow], cfg: RunConfig) -> tuple[list[NegativeRow], list[Rejection], StageResult]:
    """Run the filter stage on assembled rows: kept rows carry the score columns; dropped rows and dropped
    positives become ``filter`` rejections naming the filter, the reason and the score."""
    pairs = Pairs([r.id for r in rows], [r.caption for r in rows], [r.positive for r in rows],
                  [r.negative for r in rows], [r.source_id for r in rows], [r.neg_type for r in rows],
                  [split_of(r.source_id, cfg.output.test_fraction) for r in rows])
    fcfg = cfg.filters.negatives
    fcfg, scorers = stage_scorers(fcfg, cfg.engine)
    res = run_stage(pairs, fcfg, scorers)
    kept, rejects = [], []
    for i, r in enumerate(rows):
        pos_drop = res.positive_drops.get(r.source_id)
        row = replace(r, surface_sim=float(res.surface_sim[i]), semantic_sim=float(res.semantic_sim[i]),
                      propensity=float(res.propensity[i]), weight=float(res.weight[i]),
                      positive=None if pos_drop else r.positive, positive_prompt_sha=None if pos_drop else r.positive_prompt_sha)
        if res.keep[i]:
            kept.append(row)
        else:
            d = res.drop(i)
            rejects.append(_filter_rejection(r, d, r.negative, r.neg_type, r.provenance.prompt_sha))
    first = {}
    for r in rows:
        first.setdefault(r.source_id, r)
    for group, d in sorted(res.positive_drops.items()):
        r = first[group]
        rejects.append(_filter_rejection(r, d, r.positive or "", task.PARAPHRASE, r.positive_prompt_sha))
    return kept, rejects, res


def _filter_rejection(r: NegativeRow, d, text: str, task_name: str, prompt_sha: str | None) -> Rejection:
    return Rejection(stage="filter", reason=d.reason, detail=d.detail or f"caption: {r.caption}", raw=text,
                     source_id=r.source_id, task=task_name, prompt_sha=prompt_sha, model=r.provenance.model,
                     seed=r.provenance.seed, filter=d.filter, score=d.score)


def finalize(cfg: RunConfig, store: RunStore, inv: Inventory, timing: Timing, run_id: str | None) -> Summary:
    root = store.root
    raws, failed = finished(store, set(inv.unit_keys))
    rows, parse_rejects = task.assemble(raws, inv.templates)
    gen_rejects = parse_rejects + failed
    rows, filter_rejects, stage = filter_rows(sorted(rows, key=lambda r: r.id), cfg)
    by_split: dict[str, list[NegativeRow]] = {"train": [], "test": []}
    for r in rows:
        by_split[split_of(r.source_id, cfg.output.test_fraction)].append(r)
    rejects = inv.input_rejects + sorted(gen_rejects, key=lambda r: r.unit_key or "") + filter_rejects
    tables = {split: negatives_table(split_rows) for split, split_rows in by_split.items()}
    shards, published = publish_tables(cfg, "negatives", root, {**tables, "rejected": rejected_table(rejects)}, run_id)
    splits = published_splits(shards)  # the dataset's rows: earlier releases' included
    valid_positives = sum(1 for r in raws if r.task == task.PARAPHRASE) - sum(1 for r in parse_rejects if r.task == task.PARAPHRASE)
    summary = Summary(
        out=str(root), inputs=inv.inputs, input_rejected=len(inv.input_rejects), units=len(inv.unit_keys),
        generated=inv.generated, reused=inv.reused, kept=sum(splits.values()), rejected=len(gen_rejects),
        positives=valid_positives - len(stage.positive_drops), filtered=len(filter_rejects),
        splits=splits,
        rejected_by_reason=dict(sorted(Counter(r.reason for r in rejects).items())),
        startup_seconds=timing.startup_seconds, generation_seconds=timing.generation_seconds,
        tokens_out=sum(r.provenance.tokens_out for r in raws),
    )
    plan = store.write_plan(inv.unit_keys)
    write_card_and_manifest(cfg, store, summary, rows, raws, rejects, shards, inv.templates, run_id, stage, plan, published)
    return summary
