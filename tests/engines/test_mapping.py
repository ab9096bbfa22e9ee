"""Engine adapters' pure mappings: our sampling -> the openai client's and vLLM's arguments, their outputs ->
our completions, replica placement, and that no engine module imports vLLM unless it is selected."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from pipeline.config import load_config
from pipeline.engines.config import EngineConfig, VLLMEngineConfig
from pipeline.engines.finish import check_finish_reasons, finish_reason
from pipeline.engines.openai_compat import request_body
from pipeline.engines.vllm_engine import (
    llm_kwargs,
    replica_count,
    replica_options,
    sampling_kwargs,
    to_completion,
)
from pipeline.errors import ConfigError, EngineError, TransientEngineError
from pipeline.records import Completion, GenerationRequest, Sampling

ONE_LINE = Sampling(0.7, 0.95, 40, 2, 11)
JUDGE = Sampling(0.0, 1.0, 4, 1, 3, stop_at_newline=False, choices=("0", "1", "2"))
JSON = Sampling(0.5, 1.0, 64, 1, 5, stop_at_newline=False, json_schema=json.dumps({"type": "object"}))


def test_openai_body_maps_every_sampling_field():
    assert request_body(ONE_LINE, structured=True) == {
        "n": 2,
        "temperature": 0.7,
        "top_p": 0.95,
        "max_tokens": 40,
        "seed": 11,
        "stop": ["\n"],
    }
    assert "stop" not in request_body(JUDGE, structured=False)


def test_openai_structured_outputs_only_when_the_server_has_them():
    assert request_body(JUDGE, structured=True)["extra_body"] == {"structured_outputs": {"choice": ["0", "1", "2"]}}
    assert "extra_body" not in request_body(JUDGE, structured=False)
    fmt = request_body(JSON, structured=True)["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == {"type": "object"}
    assert "response_format" not in request_body(JSON, structured=False)


@pytest.mark.parametrize(
    "finish,stop_reason,ours",
    [("length", None, "length"), ("stop", "\n", "newline"), ("stop", None, "stop"), ("stop", 2, "stop")],
)
def test_finish_reasons(finish, stop_reason, ours):
    assert finish_reason(SimpleNamespace(finish_reason=finish, stop_reason=stop_reason)) == ours


def test_a_missing_or_unknown_finish_reason_is_never_a_stop():
    with pytest.raises(EngineError, match="expected a finish reason 'stop' or 'length'.*got None") as exc:
        finish_reason(SimpleNamespace(finish_reason=None, stop_reason=None))
    assert not isinstance(exc.value, TransientEngineError)
    with pytest.raises(EngineError, match="got 'content_filter'"):
        finish_reason(SimpleNamespace(finish_reason="content_filter"))
    for reason in ("abort", "error"):  # vLLM aborted it, or a retryable request-level error: retry the part
        with pytest.raises(TransientEngineError, match=f"finish_reason '{reason}'"):
            finish_reason(SimpleNamespace(finish_reason=reason, stop_reason=None))
    assert finish_reason(SimpleNamespace(finish_reason="repetition", stop_reason=None)) == "length"  # cut short


def test_a_completion_must_say_how_each_text_ended():
    ok = Completion("k", ("a", "b"), 1, 2, 0.1, ("stop", "length"))
    check_finish_reasons(ok, 2)
    for bad in (
        Completion("k", ("a", "b"), 1, 2, 0.1),
        Completion("k", ("a", "b"), 1, 2, 0.1, ("stop",)),
        Completion("k", ("a",), 1, 2, 0.1, ("abort",)),
    ):
        with pytest.raises(EngineError, match="never taken as 'stop'"):
            check_finish_reasons(bad, len(bad.texts))


def _vllm_cfg(**vllm) -> EngineConfig:
    return EngineConfig(
        kind="vllm", dtype="bfloat16", vllm=VLLMEngineConfig(model="HuggingFaceTB/SmolLM2-1.7B-Instruct", **vllm)
    )


def test_vllm_llm_kwargs():
    kw = llm_kwargs(_vllm_cfg(revision="abc123", max_model_len=2048))
    assert kw == {
        "model": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
        "revision": "abc123",
        "dtype": "bfloat16",
        "tensor_parallel_size": 1,
        "gpu_memory_utilization": 0.9,
        "enable_prefix_caching": True,
        "seed": 0,
        "enforce_eager": False,
        "disable_log_stats": False,
        "max_model_len": 2048,
    }
    assert llm_kwargs(_vllm_cfg(tensor_parallel_size=4))["distributed_executor_backend"] == "ray"
    assert _vllm_cfg(revision="abc123").model_id() == "HuggingFaceTB/SmolLM2-1.7B-Instruct@abc123"
    cpu = llm_kwargs(EngineConfig(kind="vllm", vllm=VLLMEngineConfig(model="m", device="cpu", kv_cache_gib=0.5)))
    assert (cpu["dtype"], cpu["kv_cache_memory_bytes"]) == ("float32", 2**29)  # no fast bf16 on AVX2 CPUs
    assert cpu["enable_chunked_prefill"] is False and "enable_chunked_prefill" not in kw  # see llm_kwargs
    assert llm_kwargs(_vllm_cfg(device="cpu"))["kv_cache_memory_bytes"] == 2**30  # vLLM would claim a NUMA node


def test_vllm_sampling_kwargs():
    assert sampling_kwargs(ONE_LINE, True) == {
        "n": 2,
        "temperature": 0.7,
        "top_p": 0.95,
        "max_tokens": 40,
        "seed": 11,
        "stop": ["\n"],
    }
    assert sampling_kwargs(JUDGE, True)["structured_outputs"] == {"choice": ["0", "1", "2"]}
    assert sampling_kwargs(JSON, True)["structured_outputs"] == {"json": {"type": "object"}}
    assert "structured_outputs" not in sampling_kwargs(JUDGE, False)


def test_vllm_request_output_to_completion():
    out = SimpleNamespace(
        prompt_token_ids=[1, 2, 3],
        outputs=[
            SimpleNamespace(text="A cat.", token_ids=[5, 6], finish_reason="stop", stop_reason=None),
            SimpleNamespace(text="A dog", token_ids=[7], finish_reason="stop", stop_reason="\n"),
            SimpleNamespace(text="A long", token_ids=[8, 9, 10], finish_reason="length", stop_reason=None),
        ],
    )
    c = to_completion(GenerationRequest("k", (("user", "x"),), ONE_LINE), out, 0.5)
    assert (c.key, c.texts, c.tokens_in, c.tokens_out) == ("k", ("A cat.", "A dog", "A long"), 3, 6)
    assert c.finish_reasons == ("stop", "newline", "length") and c.latency_s == 0.5  # no metrics: the call's latency
    out.metrics = SimpleNamespace(queued_ts=100.0, last_token_ts=100.25)
    assert to_completion(GenerationRequest("k", (("user", "x"),), ONE_LINE), out, 0.5).latency_s == 0.25  # its own


def test_vllm_replicas_fill_the_cluster_gpus():
    assert replica_count(VLLMEngineConfig(model="m"), [8]) == 8
    assert replica_count(VLLMEngineConfig(model="m", tensor_parallel_size=4), [8]) == 2
    assert replica_count(VLLMEngineConfig(model="m", replicas=3), [8]) == 3
    assert replica_count(VLLMEngineConfig(model="m", tensor_parallel_size=2), [3, 3, 3]) == 3  # a group fits one node
    assert replica_count(VLLMEngineConfig(model="m", tensor_parallel_size=4), [2, 2, 8, 0]) == 2
    with pytest.raises(ConfigError, match=r"expected 4 replica\(s\).*room for 3"):
        replica_count(VLLMEngineConfig(model="m", tensor_parallel_size=2, replicas=4), [3, 3, 3])
    assert replica_options(VLLMEngineConfig(model="m")) == {"num_gpus": 1, "num_cpus": 1}
    with pytest.raises(
        ConfigError, match=r"expected 1 replica\(s\) of tensor_parallel_size = 2.*GPUs none.*--ray-address"
    ):
        replica_count(VLLMEngineConfig(model="m", tensor_parallel_size=2), [])


@pytest.mark.integration
def test_a_placement_group_that_cannot_be_placed_fails_in_time(ray_session):
    """Real Ray (no GPU here): a replica's group of 2 GPU bundles is awaited, then removed, with the layout."""
    import ray

    with pytest.raises(ConfigError, match=r"expected a node with 2 free GPUs.*within 1 s.*GPUs: \[0"):
        replica_options(VLLMEngineConfig(model="m", tensor_parallel_size=2, placement_timeout_s=1))
    assert all(pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())


def test_vllm_defaults_to_the_bundled_model():
    """Same model, same unit keys as the embedded engine: a run can move between the two and reuse every unit."""
    cfg = load_config(None, {"engine": {"kind": "vllm"}}).engine
    assert cfg.model_id() == load_config(None, {}).engine.model_id() == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_openai_model_defaults_to_what_contrastgen_serve_serves():
    cfg = load_config(None, {"engine": {"kind": "openai"}})
    assert cfg.engine.model_id() == cfg.engine.resolved_model_path().name
    assert load_config(None, {"engine": {"kind": "openai", "openai": {"model": "m"}}}).engine.model_id() == "m"


def test_nothing_imports_vllm_unless_selected():
    """Importing every engine module, the CLI and the flows leaves vllm unimported; selecting it without the
    package installed is a config error with the fix."""
    code = (
        "import sys, pipeline.cli, flows.generate, pipeline.engines.base, "
        "pipeline.engines.finish, pipeline.engines.vllm_engine, pipeline.engines.openai_compat, pipeline.serve\n"
        "assert 'vllm' not in sys.modules, 'vllm imported'\n"
        "from pipeline.engines.base import build_engine\nfrom pipeline.config import load_config\n"
        "try:\n    build_engine(load_config(None, {'engine': {'kind': 'vllm', 'vllm': {'model': 'm'}}}).engine)\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("ConfigError") and "pip install 'contrastgen[vllm]'" in out
