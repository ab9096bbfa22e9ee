"""The openai engine against a real OpenAI-compatible server on loopback: `contrastgen serve` started by the
test, or any server named by $CONTRASTGEN_TEST_OPENAI_BASE_URL (and $CONTRASTGEN_TEST_OPENAI_MODEL)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pyarrow as pa
import pytest

from pipeline.config import load_config
from tests.conftest import coco_captions, write_jsonl

pytestmark = pytest.mark.integration
OURS = not os.environ.get("CONTRASTGEN_TEST_OPENAI_BASE_URL")  # comparisons with the in-process engine need our server


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_models_and_chat_completions(openai_server):
    url, model = openai_server
    served = json.loads(urllib.request.urlopen(url + "/models").read())["data"][0]["id"]
    model = model or served
    body = {"model": model, "messages": [{"role": "user", "content": "Name a color."}], "n": 2, "max_tokens": 8,
            "temperature": 0.7, "seed": 5}
    status, out = _post(url, body)
    assert status == 200 and len(out["choices"]) == 2 and out["usage"]["completion_tokens"] > 0
    assert all(c["finish_reason"] in ("stop", "length") for c in out["choices"])
    assert _post(url, body)[1]["choices"] == out["choices"]  # seeded: the same texts again


@pytest.mark.skipif(not OURS, reason="checks contrastgen serve's own refusals")
def test_serve_refuses_what_it_cannot_honour(openai_server):
    status, out = _post(openai_server[0], {"messages": [{"role": "user", "content": "x"}], "stop": ["END"]})
    assert status == 400 and "stop" in out["detail"]


def test_full_negatives_run_through_the_openai_engine(openai_server, negatives_run, prefect_session, tmp_path):
    """The same input as the in-process session run, generated over HTTP: every unit once, provenance says
    openai, and against `contrastgen serve` the outcome equals the in-process run's (same model, same seeds)."""
    from flows.generate import generate_flow

    url, model = openai_server
    inp = write_jsonl(tmp_path / "in.jsonl", coco_captions(10) + [{"id": "bad", "caption": " "}])
    engine = {"kind": "openai", "openai": {"base_url": url, **({"model": model} if model else {})}}
    cfg = load_config(None, {"input": {"path": inp}, "output": {"dir": tmp_path / "ds", "units_per_part": 32}, "engine": engine})
    summary = generate_flow("negatives", cfg.model_dump(mode="json"))
    assert summary["generated"] == summary["units"] > 0 and summary["kept"] > 0
    table = pa.concat_tables(pa.ipc.open_stream(p.read_bytes()).read_all() for p in sorted((tmp_path / "ds" / "data").glob("*.arrow")))
    assert set(table.column("engine").to_pylist()) == {"openai"} and min(table.column("tokens_out").to_pylist()) > 0
    if OURS:
        _, base = negatives_run
        for key in ("units", "kept", "rejected", "filtered", "tokens_out", "rejected_by_reason", "splits"):
            assert summary[key] == base[key], key
