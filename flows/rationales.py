"""Contrastive rationales: plan -> generate parts on Ray engine actors -> finalize shards and card."""

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
from pipeline.run import rationales as steps
from pipeline.run.common import Timing
from pipeline.run.store import RunStore, store_of


@task(cache_policy=NO_CACHE)
def plan(cfg: RunConfig, store: RunStore) -> steps.Plan:
    return steps.plan(cfg, store)


@task(cache_policy=NO_CACHE, **ENGINE_RETRIES)
def generate_part(pool: EnginePool, index: int, units: list, templates: dict, cfg: RunConfig, store: RunStore):
    return steps.generate_part(pool, index, units, templates, cfg, store)


@task(cache_policy=NO_CACHE)
def finalize(cfg: RunConfig, store: RunStore, the_plan: steps.Plan, timing: Timing):
    return steps.finalize(cfg, store, the_plan, timing, str(runtime.flow_run.id))


@flow(name="contrastgen-rationales", task_runner=ThreadPoolTaskRunner(max_workers=4), persist_result=False)
def rationales_flow(config: dict[str, Any]) -> dict[str, Any]:
    cfg = RunConfig.model_validate(config)
    with store_of(cfg, "rationales") as store:
        the_plan = plan(cfg, store)
        timing = Timing()
        if the_plan.pending:
            with timing.measure("startup_seconds"):
                pool = EnginePool(cfg.engine, cfg.ray)
            with timing.measure("generation_seconds"):
                run_parts(generate_part, pool, the_plan.pending, templates=the_plan.templates, cfg=cfg, store=store)
        return asdict(finalize(cfg, store, the_plan, timing))
