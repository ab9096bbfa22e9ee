"""One flow for every data kind: [plan a stage -> generate its parts on Ray engine actors] per stage -> finalize.

Each stage is planned from what the previous one left in the store (a killed run resumes at any stage); the
engine pool starts only when some stage has units left to generate (a fully reused run never loads the model).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, runtime, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from flows.parts import run_parts
from flows.retry import ENGINE_RETRIES
from pipeline.config import RunConfig
from pipeline.engines.pool import EnginePool
from pipeline.kinds import kind_of
from pipeline.run import generate as steps
from pipeline.run.common import Timing
from pipeline.run.store import store_of


@task(cache_policy=NO_CACHE)
def plan_stage(kind, ctx, store, name: str):
    return steps.plan_stage(kind, ctx, store, name)


@task(cache_policy=NO_CACHE, **ENGINE_RETRIES)
def generate_part(pool: EnginePool, index: int, units: list, kind, ctx, store):
    return steps.generate_part(kind, ctx, pool, index, units, store)


@task(cache_policy=NO_CACHE)
def finalize(kind, ctx, store, timing: Timing):
    return steps.finalize(kind, ctx, store, timing, str(runtime.flow_run.id))


@flow(name="contrastgen-generate", task_runner=ThreadPoolTaskRunner(max_workers=4), persist_result=False)
def generate_flow(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    k, cfg, timing, pool = kind_of(kind), RunConfig.model_validate(config), Timing(), None
    with store_of(cfg, kind) as store:
        with timing.measure("plan_seconds"):
            ctx = steps.start(k, cfg, store)
        for name in k.stages(cfg):
            with timing.measure("plan_seconds"):
                stage = plan_stage(k, quote(ctx), store, name)
            if not stage.pending:
                continue
            if pool is None:
                with timing.measure("startup_seconds"):
                    pool = EnginePool(cfg.engine, cfg.ray)
            with timing.measure("generation_seconds"):
                # quote: Prefect would otherwise walk every unit and record of the context for each part (O(n^2))
                run_parts(generate_part, pool, stage.pending, kind=k, ctx=quote(ctx), store=store)
        with timing.measure("finalize_seconds"):
            summary = asdict(finalize(k, quote(ctx), store, timing))
        return {**summary, "finalize_seconds": timing.finalize_seconds}
