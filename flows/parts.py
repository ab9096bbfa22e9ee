"""The generation loop the three flows share: every pending chunk is one Prefect task run of ``task``, and as
many run at once as the engine pool has slots (:attr:`pipeline.engines.pool.EnginePool.slots`: two per
replica, one generating and one ready at the replica's door), not a constant; the first failure is raised."""

from __future__ import annotations

from typing import Any

from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline.engines.pool import EnginePool


def run_parts(task, pool: EnginePool, chunks: list[list], **params: Any) -> None:
    """Run ``task(pool=pool, index=i, units=chunk, **params)`` for every chunk."""
    with ThreadPoolTaskRunner(max_workers=pool.slots) as runner:
        futures = [runner.submit(task, {"pool": pool, "index": i, "units": chunk, **params}) for i, chunk in enumerate(chunks)]
        wait(futures)
        for f in futures:
            f.result()  # re-raise the first failure
