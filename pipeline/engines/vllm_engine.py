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
import time

from pipeline.engines.base import finish_reason, sampling_args
from pipeline.engines.config import EngineConfig, VLLMEngineConfig
from pipeline.errors import ConfigError
from pipeline.records import Completion, GenerationRequest, Sampling


def llm_kwargs(cfg: EngineConfig) -> dict:
    """``vllm.LLM`` arguments from our config (unset optional fields are left to vLLM)."""
    v = cfg.vllm
    cfg.model_id()  # raises the config error when no model is set
    kw = {
        "model": v.model, "revision": v.revision, "dtype": cfg.dtype,
        "tensor_parallel_size": v.tensor_parallel_size, "gpu_memory_utilization": v.gpu_memory_utilization,
        "enable_prefix_caching": v.enable_prefix_caching, "seed": 0,
    }
    optional = {"max_model_len": v.max_model_len, "max_num_seqs": v.max_num_seqs,
                "download_dir": str(v.download_dir) if v.download_dir else None}
    kw.update({k: val for k, val in optional.items() if val is not None})
    if v.tensor_parallel_size > 1:
        kw["distributed_executor_backend"] = "ray"  # workers go into the actor's placement group
    return kw


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


def to_completion(req: GenerationRequest, out, latency_s: float) -> Completion:
    """One ``RequestOutput`` as our completion (a ``stop_reason`` of "\\n" is our ``newline`` stop)."""
    outs = list(out.outputs)
    reasons = tuple(finish_reason(o) for o in outs)
    return Completion(req.key, tuple(o.text for o in outs), len(out.prompt_token_ids or ()),
                      sum(len(o.token_ids) for o in outs), round(latency_s, 4), reasons)


def replica_count(v: VLLMEngineConfig, cluster_gpus: float) -> int:
    """``vllm.replicas``, or every whole group of ``tensor_parallel_size`` GPUs in the cluster."""
    n = v.replicas or int(cluster_gpus) // v.tensor_parallel_size
    if n < 1:
        raise ConfigError(f"engine.kind vllm: expected at least {v.tensor_parallel_size} GPU(s) in the Ray cluster "
                          f"(tensor_parallel_size), found {cluster_gpus:g}. Fix: join a GPU cluster with --ray-address, "
                          "or use --engine embedded / openai")
    return n


def replica_options(v: VLLMEngineConfig) -> dict:
    """Ray actor options of one replica: one GPU, or a STRICT_PACK placement group of ``tensor_parallel_size``
    GPU bundles on one node that vLLM's Ray executor fills with its workers (the actor holds no GPU itself)."""
    if v.tensor_parallel_size == 1:
        return {"num_gpus": 1, "num_cpus": 1}
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = placement_group([{"GPU": 1, "CPU": 1}] * v.tensor_parallel_size, strategy="STRICT_PACK")
    return {"num_gpus": 0, "num_cpus": 0, "scheduling_strategy": PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_capture_child_tasks=True)}


class VLLMEngine:
    name = "vllm"

    def __init__(self, cfg: EngineConfig):
        try:
            import vllm
            from vllm import sampling_params as sp
        except ImportError:
            raise ConfigError("engine.kind vllm: expected the vllm package on every GPU node, found it missing. "
                              "Fix: pip install 'contrastgen[vllm]' (on the nodes' image)") from None
        self._vllm = vllm
        self._structured_cls = getattr(sp, "StructuredOutputsParams", None)  # the probe: vLLM >= 0.10.2 has it
        self.structured = cfg.vllm.structured == "auto" and self._structured_cls is not None
        self.model_id = cfg.model_id()
        self.llm = vllm.LLM(**llm_kwargs(cfg))

    def params(self, s: Sampling):
        kw = sampling_kwargs(s, self.structured)
        if "structured_outputs" in kw:
            kw["structured_outputs"] = self._structured_cls(**kw["structured_outputs"])
        return self._vllm.SamplingParams(**kw)

    def warmup(self) -> None:
        self.generate([GenerationRequest("warmup", (("user", "Hi"),), Sampling(0.0, 1.0, 2, 1, 0))])

    def generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        start = time.perf_counter()
        convs = [[{"role": r, "content": c} for r, c in q.messages] for q in requests]
        outs = self.llm.chat(convs, sampling_params=[self.params(q.sampling) for q in requests], use_tqdm=False)
        latency = time.perf_counter() - start
        return [to_completion(q, o, latency) for q, o in zip(requests, outs, strict=True)]
