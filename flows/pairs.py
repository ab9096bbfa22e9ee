"""Synthetic sentence pairs: [seed sentences from topics] -> entail + contradict -> judge -> finalize.

Each stage is planned from what the previous one left in the store (a killed run resumes at any stage);
the engine pool starts only when some stage has units left to generate.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, runtime, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.parts import run_parts
from flows.retry import ENGINE_RETRIES
from pipeline.config import RunConfig
from pipeline.engines.pool import EnginePool
from pipeline.run import pairs as steps
from pipeline.run.common import Timing
from pipeline.run.store import RunStore, store_of
from pipeline.tasks import pairs as pair_task


@task(cache_policy=NO_CACHE)
def plan_stage(units: list, cfg: RunConfig, store: RunStore) -> steps.Stage:
    return steps.stage(units, cfg, store)


@task(cache_policy=NO_CACHE, **ENGINE_RETRIES)
def generate_part(pool: EnginePool, index: int, units: list, templates: dict, cfg: RunConfig, store: RunStore):
    return steps.generate_part(pool, index, units, templates, cfg, store)


@task(cache_policy=NO_CACHE)
def finalize(cfg: RunConfig, store: RunStore, plan: steps.Plan, timing: Timing):
    return steps.finalize(cfg, store, plan, timing, str(runtime.flow_run.id))


class _Engines:
    """The engine pool, started on first use (a fully reused run never loads the model)."""

    def __init__(self, cfg: RunConfig, timing: Timing):
        self.cfg, self.timing, self.pool = cfg, timing, None

    def run(self, stage: steps.Stage, templates: dict, store: RunStore) -> None:
        if not stage.pending:
            return
        if self.pool is None:
            with self.timing.measure("startup_seconds"):
                self.pool = EnginePool(self.cfg.engine, self.cfg.ray)
        with self.timing.measure("generation_seconds"):
            run_parts(generate_part, self.pool, stage.pending, templates=templates, cfg=self.cfg, store=store)


@flow(name="contrastgen-pairs", task_runner=ThreadPoolTaskRunner(max_workers=4), persist_result=False)
def pairs_flow(config: dict[str, Any]) -> dict[str, Any]:
    cfg = RunConfig.model_validate(config)
    with store_of(cfg, "pairs") as store:
        templates, timing = pair_task.templates_for(cfg), Timing()
        engines, stages = _Engines(cfg, timing), {}
        if cfg.input.path is not None:
            (sentences, input_rejects), seed_rejects = steps.input_sentences(cfg), []
        else:
            stages[pair_task.SEED] = plan_stage(pair_task.seed_units(cfg, templates), cfg, store)
            engines.run(stages[pair_task.SEED], templates, store)
            (sentences, seed_rejects), input_rejects = steps.seeded_sentences(cfg, store, stages[pair_task.SEED]), []
        stages[steps.GENERATE] = plan_stage(pair_task.generation_units(sentences, cfg, templates), cfg, store)
        engines.run(stages[steps.GENERATE], templates, store)
        cands, _ = steps.candidates(store, stages[steps.GENERATE], templates)
        items = pair_task.judge_items(sentences, cands)
        stages[pair_task.JUDGE] = plan_stage(pair_task.judge_units(items, cfg, templates), cfg, store)
        engines.run(stages[pair_task.JUDGE], templates, store)
        plan = steps.Plan(sentences, input_rejects, seed_rejects, stages, templates)
        return asdict(finalize(cfg, store, plan, timing))
