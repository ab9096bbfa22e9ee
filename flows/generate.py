"""One flow for every data kind: per block of sources, [plan a stage -> generate it on Ray engine actors] per
stage -> finalize.

Prefect tasks are stages of a block, not parts: a block's stage is planned from what the store holds (a killed
run resumes at any block and stage), then generated as one task whose parts run on the pool's slots; a retry
of that task (a transient engine error) plans again and sends only the units still missing. The engine pool
starts only when some stage has units left to generate (a fully reused run never loads the model).

A stop (SIGINT, SIGTERM, a Prefect cancel: :mod:`pipeline.stop`) raises ``Stopped`` wherever the run is; the flow
closes the engine pool and returns a Cancelled state whose message is the one line the CLI prints.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, cast

from prefect import flow, runtime, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.states import Cancelled
from prefect.utilities.annotations import quote

from flows.retry import ENGINE_RETRIES
from pipeline import stop
from pipeline.config import RunConfig
from pipeline.engines.pool import EnginePool, ensure_ray, release_before_finalize, stop_ray
from pipeline.kinds import kind_of
from pipeline.progress import Meter
from pipeline.run import generate as steps
from pipeline.run.common import Progress, Summary, Timing
from pipeline.run.store import store_of


@task(cache_policy=NO_CACHE)
def plan_stage(kind, ctx, store, name: str) -> tuple[int, int, int]:
    """(units, found done, to generate): the stage itself stays in the block's context (Prefect keeps every task's
    result for the flow's lifetime: a count, not a block's units)."""
    st = steps.plan_stage(kind, ctx, store, name)
    return len(st.keys), st.reused, sum(len(c) for c in st.pending)


# ENGINE_RETRIES is a plain dict of task() options whose values mypy sees as `object`: Any lets task() check the call
@task(cache_policy=NO_CACHE, **cast("dict[str, Any]", ENGINE_RETRIES))
def generate_stage(kind, ctx, pool: EnginePool, store, name: str, meter: Meter) -> int:
    return steps.generate_stage(kind, ctx, pool, store, name, meter)


@task(cache_policy=NO_CACHE)
def finalize(kind, ctx, store, timing: Timing, progress: Progress) -> Summary:
    return steps.finalize(kind, ctx, store, timing, str(runtime.flow_run.id), progress)


@flow(name="contrastgen-generate", persist_result=False)
def generate_flow(kind: str, config: dict[str, Any]) -> dict[str, Any] | State[Any]:
    """The run's summary; or, when the run is stopped (SIGINT, SIGTERM, a Prefect cancel), a Cancelled state whose
    message is the one line to show (:mod:`pipeline.stop`)."""
    cfg = RunConfig.model_validate(config)
    started = ensure_ray(cfg.ray)  # a deployment's run starts its own Ray; a CLI run finds the one the CLI started
    try:
        with stop.handling():  # over Prefect's SIGTERM bridge, which would end the run Crashed
            return _run(kind_of(kind), cfg)
    finally:
        if started:
            stop_ray()


def _run(k, cfg: RunConfig) -> dict[str, Any] | State[Any]:
    timing, progress, pool = Timing(), Progress(), None
    meter, planned, blocks = Meter(f"generate {k.name}", unit="units"), 0, 0
    with store_of(cfg, k.name) as store, meter:
        try:
            with stop.armed():
                with timing.measure("plan_seconds"):
                    ctx = steps.start(k, cfg)
                blocks = steps.block_count(ctx)
                for i, block in enumerate(steps.blocks(ctx, store)):
                    planned = i + 1
                    if blocks > 1:
                        meter.advance(block=f"{i + 1}/{blocks} (total grows as blocks are planned)")
                    for name in k.stages(cfg):
                        with timing.measure("plan_seconds"):
                            # quote: Prefect would otherwise walk every unit and record of the block for its task graph
                            units, reused, pending = plan_stage(k, quote(block), store, name)
                        progress.units, progress.reused, progress.generated = (
                            progress.units + units,
                            progress.reused + reused,
                            progress.generated + pending,
                        )
                        meter.grow(pending)
                        if not pending:
                            continue
                        if pool is None:
                            with timing.measure("startup_seconds"):
                                pool = EnginePool(cfg.engine, cfg.ray)
                            meter.begin()
                        with timing.measure("generation_seconds"):
                            # the task gets the Meter itself: Prefect unwraps quote() (typed as quote, not as Meter)
                            generate_stage(k, quote(block), pool, store, name, cast(Meter, quote(meter)))
                        stop.check()
                meter.close()
                if pool is not None and release_before_finalize(pool.engine_cfg, cfg.ray):
                    pool.close()  # finalize's GPU scorers need the GPUs the replicas hold
                with timing.measure("finalize_seconds"):
                    summary = asdict(finalize(k, quote(ctx), store, timing, progress))
        except stop.Stopped as exc:
            meter.quiet()
            if pool is not None:
                pool.close(grace_s=5)  # parts in flight are dropped whole: none was committed half
            return Cancelled(
                message=stop.line(
                    exc.signum, store.committed_units(), progress.units, len(store.parts()), planned < blocks
                )
            )
        return {**summary, "finalize_seconds": timing.finalize_seconds}
