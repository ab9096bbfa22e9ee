"""Engine pools: long-lived Ray actors that each load an engine once, or the driver itself for HTTP engines.

Actors are named by a hash of the engine config inside the ``contrastgen`` namespace and fetched with
``get_if_exists``, so several runs in one driver share a loaded model instead of reloading it per run or
per Prefect task. vLLM replicas get GPUs: one each, or one STRICT_PACK placement group of
``tensor_parallel_size`` GPU bundles each (vLLM's Ray executor places its workers in it).

Worker failure: a part whose actor dies (``RayActorError``) is sent to the next live actor. Ray restarts
the dead one (``ray.actor_restarts``) for later parts. A part's results are committed only when it
returns whole (:func:`pipeline.run.common.commit_part`), so a killed part loses nothing and duplicates
nothing. The ``openai`` engine is an HTTP client: it runs in the driver with no actor.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Callable

import ray
from ray.exceptions import RayActorError

from pipeline.engines.config import EngineConfig, RayConfig
from pipeline.errors import TransientEngineError
from pipeline.records import Completion, GenerationRequest

NAMESPACE = "contrastgen"
log = logging.getLogger("contrastgen.pool")


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

    def pid(self) -> int:
        return os.getpid()

    def generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        return self.engine.generate(requests)


def needs_ray(engine: EngineConfig) -> bool:
    return engine.kind != "openai"


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


def _placement(engine: EngineConfig, ray_cfg: RayConfig) -> tuple[int, Callable[[], dict]]:
    """(replicas, a function making one replica's actor options): called only for actors not yet running,
    so a vLLM placement group is never reserved for an actor that already exists."""
    if engine.kind == "vllm":
        from pipeline.engines.vllm_engine import replica_count, replica_options

        return replica_count(engine.vllm, ray.cluster_resources().get("GPU", 0)), lambda: replica_options(engine.vllm)
    cpus = int(ray.available_resources().get("CPU", 1)) or 1
    gpu = engine.device.startswith("cuda")
    return ray_cfg.workers, lambda: {"num_cpus": min(1, cpus), "num_gpus": 1 if gpu else 0}


def _actor(name: str, make_options: Callable[[], dict], restarts: int, blob: str, threads: int):
    """The named engine actor: the running one, or a new one."""
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        pass
    return EngineActor.options(name=name, namespace=NAMESPACE, get_if_exists=True, max_concurrency=1,
                               max_restarts=restarts, **make_options()).remote(blob, threads)


class EnginePool:
    """Engine actors (or the in-driver HTTP engine); part ``index`` goes to actor ``index % n`` first."""

    def __init__(self, engine: EngineConfig, ray_cfg: RayConfig):
        self.engine_cfg, self.ray_cfg, self.local = engine, ray_cfg, None
        self.started_ray = False
        if not needs_ray(engine):
            from pipeline.engines.base import build_engine

            self.local = build_engine(engine)
            self.local.warmup()
            self.engine_name, self.model_id, self.actors = self.local.name, self.local.model_id, []
            return
        self.started_ray = ensure_ray(ray_cfg)
        blob = engine.model_dump_json()
        tag = hashlib.sha256(blob.encode()).hexdigest()[:12]
        n, make_options = _placement(engine, ray_cfg)
        threads = engine.threads or max(1, (os.cpu_count() or 1) // n)
        self.actors = [_actor(f"engine-{tag}-{i}", make_options, ray_cfg.actor_restarts, blob, threads) for i in range(n)]
        self.engine_name, self.model_id = ray.get(self.actors[0].identity.remote())

    def generate(self, index: int, requests: list[GenerationRequest]) -> list[Completion]:
        if self.local is not None:
            return self.local.generate(requests)
        n = len(self.actors)
        errors = []
        for step in range(n):
            actor = self.actors[(index + step) % n]
            try:
                return ray.get(actor.generate.remote(requests))
            except RayActorError as exc:  # died mid-part (or restarting): the next actor takes the whole part
                log.warning("engine actor %d failed on part %d (%s); retrying the part on another actor",
                            (index + step) % n, index, type(exc).__name__)
                errors.append(exc)
        raise TransientEngineError(f"part {index}: all {n} engine actors failed ({errors[-1]}). Fix: check `ray status` "
                                   "and the actors' logs; rerun the same command to resume")
