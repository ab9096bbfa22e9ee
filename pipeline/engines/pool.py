"""Engine replicas: long-lived Ray actors that each load an engine once, fed by a dispatcher that routes by pull.

Replicas are named by a hash of the engine config inside the ``contrastgen`` namespace and fetched with
``get_if_exists``, so several runs in one driver share a loaded model instead of reloading it per run or per
Prefect task. vLLM replicas get GPUs: one each, or one STRICT_PACK placement group of ``tensor_parallel_size``
GPU bundles each (vLLM's Ray executor places its workers in it).

A replica is an async actor that works on ``engine.replica_calls()`` calls (parts) at once: an engine with an
``agenerate`` coroutine (vLLM's AsyncLLM) merges them into one continuous batch; a synchronous engine runs them
one at a time in a thread, the next one waiting at its door. Its probes (``node``, ``identity``) answer while it
generates.

Work is pulled, not routed (:mod:`pipeline.engines.dispatch`): the parts that Ray Data part workers
(:mod:`pipeline.run.stream`) send go to the preferred replica when it has room, else to any replica with room,
else wait for the first one to free up; so a slow replica takes fewer parts and a lost one's parts go to the
others at once. The ``openai`` engine is an HTTP client: each part worker holds its own, with no replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Protocol, cast

import ray

from pipeline.engines.config import EngineConfig, RayConfig
from pipeline.engines.metered import ReplicaClock, accelerator, cpu_timed, share
from pipeline.errors import EngineTimeoutError
from pipeline.records import Completion, EngineFailure, GenerationRequest, Reason

if TYPE_CHECKING:
    from ray.actor import ActorClass, ActorHandle

    from pipeline.engines.base import Engine

NAMESPACE = "contrastgen"
log = logging.getLogger("contrastgen.pool")


class PartEngine(Protocol):
    """What a part worker generates with: the pool itself (an HTTP client), or its replicas' dispatcher."""

    engine_name: str
    model_id: str

    def generate(self, index: int, requests: list[GenerationRequest]) -> list[Completion | EngineFailure]: ...


def visible_devices(gpu_ids: list, environ: dict) -> str | None:
    """The ``CUDA_VISIBLE_DEVICES`` a one-GPU replica must set itself, or None when Ray set it already. Ray sets it
    for an actor with ``num_gpus`` unless the cluster sets ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1``; then
    every replica would see all GPUs and use GPU 0, so the replica sets it from ``ray.get_gpu_ids()``.

    >>> visible_devices([3], {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"})
    '3'
    >>> visible_devices(["GPU-3b1f"], {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"})
    'GPU-3b1f'
    >>> visible_devices([3], {}) is None
    True
    """
    if not gpu_ids or environ.get("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES", "0") in ("", "0"):
        return None
    return ",".join(str(g) for g in gpu_ids)  # under NOSET Ray hands the node's own entries: ids, UUIDs or MIG ids


@ray.remote
class EngineActor:
    """Holds one engine for its whole life (replica ``index`` of its pool)."""

    def __init__(self, engine_json: str, threads: int, index: int = 0):
        import torch

        from pipeline.engines.base import build_engine

        cfg = EngineConfig.model_validate_json(engine_json)
        if cfg.kind != "vllm" or cfg.vllm.tensor_parallel_size == 1:  # a TP group's workers get theirs from vLLM
            devices = visible_devices(ray.get_gpu_ids(), dict(os.environ))
            if devices is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = devices
        torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS=1 in workers; we size threads explicitly
        self.engine = build_engine(cfg)
        self.engine.warmup()
        self.slow_s = cfg.inject_slow_replica_s if index == 0 else 0.0
        self.threads = max(1, threads)
        self._one = asyncio.Lock()
        vllm = cfg.kind == "vllm"
        gpus = cfg.vllm.tensor_parallel_size if vllm else 1
        self.accelerator = accelerator(cfg.vllm.device if vllm else cfg.device, gpus)
        self.clock = ReplicaClock()  # engine-seconds of each call (calls in flight share a second)

    async def identity(self) -> tuple[str, str]:
        return self.engine.name, self.engine.model_id

    async def pid(self) -> int:
        return os.getpid()

    async def node(self) -> str:
        """The Ray node this replica runs on (a probe: it answers once the model is loaded, also while busy)."""
        return ray.get_runtime_context().get_node_id()

    async def generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        if self.slow_s:
            await asyncio.sleep(self.slow_s)
        agenerate = getattr(self.engine, "agenerate", None)
        if agenerate is not None:
            started = self.clock.start()
            try:
                out = await agenerate(requests)
            finally:
                seconds = self.clock.stop(started)
            return share(out, seconds, self.accelerator)
        async with self._one:  # the wait at the door is not engine time
            started = self.clock.start()
            setup_before = getattr(self.engine, "setup_s", 0.0)
            try:
                out, cpu_s = await asyncio.to_thread(cpu_timed, self.engine.generate, requests)
            finally:
                seconds = self.clock.stop(started)
            setup = getattr(self.engine, "setup_s", 0.0) - setup_before
        if self.accelerator == "cpu":  # the cores' time, not the host's: a busy neighbour is not this call's cost
            seconds, setup = cpu_s / self.threads, setup / self.threads
        return share(out, seconds, self.accelerator, min(setup, seconds))

    async def release(self, timeout_s: float | None = None) -> None:
        """Shut the engine down (its GPUs and child processes), before the actor is killed; ``timeout_s``: how long
        an engine that takes one (vLLM) may wait for its processes before it kills them."""
        shutdown = getattr(self.engine, "shutdown", None)
        if shutdown is not None:
            takes = "timeout_s" in inspect.signature(shutdown).parameters
            await asyncio.to_thread(shutdown, **({"timeout_s": timeout_s} if takes and timeout_s is not None else {}))


def needs_ray(engine: EngineConfig) -> bool:
    """The engine runs in Ray replicas (the openai engine is an HTTP client in each part worker)."""
    return engine.kind != "openai"


def ensure_ray(cfg: RayConfig) -> bool:
    """Connect to ``cfg.address`` or start a local Ray; True when this call started it."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"namespace": NAMESPACE, "include_dashboard": False, "log_to_driver": False}
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        if cfg.address:
            ray.init(address=cfg.address, **kwargs)
        else:
            ray.init(num_cpus=os.cpu_count(), **kwargs)
    finally:
        if callable(before):  # ray.init sets SIGTERM -> sys.exit: keep pipeline.stop's handler (or Prefect's bridge)
            signal.signal(signal.SIGTERM, before)
    return True


def stop_ray() -> None:
    """``ray.shutdown()`` of the local Ray this process started, then of what outlives it: a worker busy in native
    code when its raylet goes (an engine replica mid-generation) can linger orphaned, holding its cores or its GPU.
    Ray's processes are this process's descendants; Prefect's temporary server, also a child, is left to Prefect."""
    import psutil

    def is_ray(p: psutil.Process) -> bool:
        try:
            cmd = p.cmdline()
        except psutil.Error:
            return False
        return bool(cmd) and (cmd[0].startswith("ray::") or any("/ray/" in c for c in cmd[:3]))

    family = [p for p in psutil.Process().children(recursive=True) if is_ray(p)]
    ray.shutdown()
    _, alive = psutil.wait_procs(family, timeout=3)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def resolve_vllm_device(engine: EngineConfig) -> EngineConfig:
    """``engine.vllm.device: auto`` made concrete from the cluster: cuda when any alive node has a GPU, else cpu."""
    if engine.kind != "vllm" or engine.vllm.device != "auto":
        return engine
    from pipeline.engines.vllm_engine import alive_node_gpus

    device = "cuda" if sum(alive_node_gpus()) else "cpu"
    return engine.model_copy(update={"vllm": engine.vllm.model_copy(update={"device": device})})


def uses_gpus(engine: EngineConfig) -> bool:
    """The replicas hold GPUs (they must let them go before GPU scorers can start)."""
    return (engine.kind == "vllm" and engine.vllm.device == "cuda") or (
        engine.kind in ("embedded", "plugin") and engine.device.startswith("cuda")
    )


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


def _actor(
    name: str,
    make_options: Callable[[], dict],
    engine: EngineConfig,
    restarts: int,
    blob: str,
    threads: int,
    index: int,
):
    """The named engine actor: the running one, or a new one (its calls plus two probes at once)."""
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        pass
    return (
        cast("ActorClass[EngineActor]", EngineActor)
        .options(  # ray.remote on a class: mypy keeps the class
            name=name,
            namespace=NAMESPACE,
            get_if_exists=True,
            max_concurrency=engine.replica_calls() + 2,
            max_restarts=restarts,
            **make_options(),
        )
        .remote(blob, threads, index)
    )


class EnginePool:
    """The driver's handle on a run's engine: replicas and their dispatcher (Ray engines), or an in-process HTTP
    client (openai). :meth:`caller` is what part workers use; :meth:`generate` calls the same from here."""

    def __init__(self, engine: EngineConfig, ray_cfg: RayConfig):
        self.engine_cfg, self.ray_cfg = engine, ray_cfg
        self.local: Engine | None = None  # the openai engine's in-process client
        self.actors: list[ActorHandle] = []
        self.dispatcher: ActorHandle | None = None
        if not needs_ray(engine):
            from pipeline.engines.base import build_engine

            self.local = build_engine(engine)
            self.local.warmup()  # in the driver too: a server that is down fails the run at once
            self.engine_name, self.model_id = self.local.name, self.local.model_id
            return
        ensure_ray(ray_cfg)
        self._start_replicas()

    def _start_replicas(self) -> None:
        from pipeline.engines.dispatch import start_dispatcher

        engine = self.engine_cfg = resolve_vllm_device(self.engine_cfg)
        blob = engine.model_dump_json()
        tag = hashlib.sha256(blob.encode()).hexdigest()[:12]
        n, make_options = _placement(engine, self.ray_cfg)
        threads = engine.threads or max(1, (os.cpu_count() or 1) // n)
        names = [f"engine-{tag}-{i}" for i in range(n)]
        self.actors = [
            _actor(name, make_options, engine, self.ray_cfg.actor_restarts, blob, threads, i)
            for i, name in enumerate(names)
        ]
        dispatcher, self.dispatcher_name = start_dispatcher(engine, names, f"dispatch-{tag}-{n}")
        self.dispatcher = dispatcher
        self.engine_name, self.model_id = ray.get(dispatcher.wait_ready.remote())

    @property
    def slots(self) -> int:
        """Ray Data part tasks worth having in flight: each replica's calls plus one ready at its door (the openai
        engine's part workers are ``ray.clients`` instead)."""
        return max(1, len(self.actors)) * (self.engine_cfg.replica_calls() + 1)

    def caller(self) -> PartEngine:
        """What a part worker generates with: the replicas' dispatcher, by name (picklable)."""
        from pipeline.engines.dispatch import DispatcherCall

        return DispatcherCall(self.dispatcher_name, self.engine_name, self.model_id)

    def generate(self, index: int, requests: list[GenerationRequest]) -> list[Completion | EngineFailure]:
        """One outcome per request, in order: its completion, or why the engine could not complete it."""
        if self.local is not None:
            return self._local_generate(requests)
        return self.caller().generate(index, requests)

    def log_notes(self) -> None:
        """Log here what the dispatcher noted (a replica lost, replaced, left out): the user's log is the driver's."""
        if self.dispatcher is None:
            return
        try:
            notes = cast(list[str], ray.get(self.dispatcher.drain_notes.remote(), timeout=30))
        except (ray.exceptions.RayError, TimeoutError) as exc:  # never masks the error a stream is raising
            log.info("could not read the dispatcher's notes: %s", exc)
            return
        for note in notes:
            log.warning(note)

    def _local_generate(self, requests: list[GenerationRequest]) -> list[Completion | EngineFailure]:
        assert self.local is not None  # generate() calls this for the in-process engine only
        for attempt in (1, 2):
            try:
                start = time.perf_counter()
                out = list(self.local.generate(requests))
                return list(share(out, time.perf_counter() - start, "api"))  # a server's: its hardware is not ours
            except EngineTimeoutError as exc:
                log.warning("engine call past its deadline (attempt %d of 2): %s", attempt, exc)
                last = exc
        return [EngineFailure(r.key, Reason.engine_timeout, f"{last} (twice)") for r in requests]

    def close(self, grace_s: float = 60.0) -> None:
        """Shut the dispatcher down (no part goes out, none is retried or isolated from now), then the replicas,
        each up given ``grace_s`` to release its engine (vLLM's EngineCore processes end with it; one never placed is
        killed at once: it would never answer); their GPUs go back to the cluster."""
        if not self.actors:
            return
        up = self.actors
        if self.dispatcher is not None:
            try:  # a replica never placed (or still loading) would never answer release: it is killed at once
                states = cast(list[tuple[str, int]], ray.get(self.dispatcher.states.remote(), timeout=10))
                up = [a for a, (state, _) in zip(self.actors, states) if state == "ready"]
            except Exception as exc:  # the dispatcher lost: every replica is asked, within grace_s
                log.info("reading the replicas' states: %s", exc)
            ray.kill(self.dispatcher, no_restart=True)
        try:
            ray.get([a.release.remote(min(5.0, max(1.0, grace_s - 4))) for a in up], timeout=grace_s)
        except Exception as exc:  # a replica already dead, restarting or still busy: killing it is what matters
            log.info("releasing the engines: %s", exc)
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors, self.dispatcher = [], None


def release_before_finalize(engine: EngineConfig, ray_cfg: RayConfig) -> bool:
    """Finalize's model scorers run on Ray Data workers with a GPU each where the cluster has GPUs: replicas holding
    GPUs would leave them none (they would wait forever), so the engines go first."""
    return ray_cfg.scorers > 0 and uses_gpus(engine)
