"""Long-lived Ray actors that each load an engine once and serve many generation calls.

Actors are named by a hash of the engine config inside the ``contrastgen`` namespace and fetched
with ``get_if_exists``, so several runs in one driver (or one cluster, for detached use later)
share a loaded model instead of reloading it per run or per Prefect task.
"""

from __future__ import annotations

import hashlib
import os

import ray

from pipeline.config import EngineConfig, RayConfig
from pipeline.records import Completion, GenerationRequest

NAMESPACE = "contrastgen"


@ray.remote
class EngineActor:
    """Holds one engine for its whole life."""

    def __init__(self, engine_json: str, threads: int):
        import torch

        from pipeline.engines.base import build_engine

        torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS=1 in workers; we size threads explicitly
        self.engine = build_engine(EngineConfig.model_validate_json(engine_json))
        self.engine.warmup()

    def identity(self) -> tuple[str, str]:
        return self.engine.name, self.engine.model_id

    def generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        return self.engine.generate(requests)


def ensure_ray(cfg: RayConfig) -> bool:
    """Connect to ``cfg.address`` or start a local Ray; True when this call started it."""
    if ray.is_initialized():
        return False
    kwargs = {"namespace": NAMESPACE, "include_dashboard": False, "log_to_driver": False}
    if cfg.address:
        ray.init(address=cfg.address, **kwargs)
    else:
        ray.init(num_cpus=os.cpu_count(), **kwargs)
    return True


class EnginePool:
    """``workers`` engine actors; work is spread round-robin by part index."""

    def __init__(self, engine: EngineConfig, ray_cfg: RayConfig):
        self.engine_cfg, self.ray_cfg = engine, ray_cfg
        self.started_ray = ensure_ray(ray_cfg)
        blob = engine.model_dump_json()
        tag = hashlib.sha256(blob.encode()).hexdigest()[:12]
        cpus = int(ray.available_resources().get("CPU", 1)) or 1
        threads = engine.threads or max(1, (os.cpu_count() or 1) // ray_cfg.workers)
        self.actors = [
            EngineActor.options(
                name=f"engine-{tag}-{i}", namespace=NAMESPACE, get_if_exists=True,
                num_cpus=min(1, cpus), max_concurrency=1,
            ).remote(blob, threads)
            for i in range(ray_cfg.workers)
        ]
        self.engine_name, self.model_id = ray.get(self.actors[0].identity.remote())

    def generate(self, index: int, requests: list[GenerationRequest]) -> list[Completion]:
        return ray.get(self.actors[index % len(self.actors)].generate.remote(requests))
