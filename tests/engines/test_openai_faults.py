"""The openai engine against injected server faults (a tiny stdlib HTTP server on 127.0.0.1 stands in for a
misbehaving OpenAI-compatible server): retries with backoff on 429/5xx, a clear error on garbage, and the
concurrency bound."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.engines.config import EngineConfig, OpenAIEngineConfig
from pipeline.engines.openai_compat import OpenAIEngine
from pipeline.errors import EngineError, TransientEngineError
from pipeline.records import GenerationRequest, Sampling


def _completion(n: int) -> dict:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": f"text {i}"}, "finish_reason": "stop"}
            for i in range(n)
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2 * n, "total_tokens": 3 + 2 * n},
    }


class FaultServer:
    """Answers each POST with ``script(index, body) -> (status, payload)``; counts requests and peak concurrency."""

    def __init__(self, script, delay_s: float = 0.0):
        self.script, self.delay_s, self.calls, self.inflight, self.peak = script, delay_s, 0, 0, 0
        lock, outer = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    index, outer.calls, outer.inflight = outer.calls, outer.calls + 1, outer.inflight + 1
                    outer.peak = max(outer.peak, outer.inflight)
                time.sleep(outer.delay_s)
                status, payload = outer.script(index, body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a deadline): nothing to answer
                    pass
                with lock:
                    outer.inflight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def engine(self, **kw) -> OpenAIEngine:
        return OpenAIEngine(
            EngineConfig(kind="openai", openai=OpenAIEngineConfig(base_url=self.url, model="m", structured="off", **kw))
        )


REQ = GenerationRequest("k", (("user", "hi"),), Sampling(0.7, 0.9, 8, 2, 1))


def test_retries_429_and_5xx_then_succeeds():
    server = FaultServer(
        lambda i, body: (
            (429, {"error": "slow down"})
            if i == 0
            else (503, {"error": "busy"})
            if i == 1
            else (200, _completion(body["n"]))
        )
    )
    [c] = server.engine(max_retries=3).generate([REQ])
    assert server.calls == 3 and c.texts == ("text 0", "text 1") and (c.tokens_in, c.tokens_out) == (3, 4)


def test_gives_up_after_max_retries_as_a_transient_error():
    server = FaultServer(lambda i, body: (500, {"error": "down"}))
    with pytest.raises(TransientEngineError, match=r"still failing after retries.*Fix:"):
        server.engine(max_retries=1).generate([REQ])
    assert server.calls == 2  # the first try and one retry: no retry storm


def test_garbage_answer_is_a_clear_non_transient_error():
    server = FaultServer(lambda i, body: (200, b"<html>not json</html>"))
    with pytest.raises(EngineError, match=r"expected an OpenAI chat completion, got a malformed answer") as exc:
        server.engine(max_retries=2).generate([REQ])
    assert not isinstance(exc.value, TransientEngineError)
    assert server.calls == 1  # a malformed answer is not retried


def test_bad_request_is_not_retried_and_names_the_status():
    server = FaultServer(lambda i, body: (400, {"error": {"message": "unknown model"}}))
    with pytest.raises(EngineError, match="HTTP 400"):
        server.engine(max_retries=3).generate([REQ])
    assert server.calls == 1


def test_missing_samples_are_an_error():
    server = FaultServer(lambda i, body: (200, _completion(1)))
    with pytest.raises(EngineError, match="expected 2 choices"):
        server.engine().generate([REQ])


def test_concurrency_is_bounded():
    server = FaultServer(lambda i, body: (200, _completion(body["n"])), delay_s=0.1)
    reqs = [GenerationRequest(f"k{i}", (("user", str(i)),), REQ.sampling) for i in range(24)]
    out = server.engine(concurrency=4).generate(reqs)
    assert [c.key for c in out] == [r.key for r in reqs]  # order kept
    assert server.peak == 4


def test_a_missing_finish_reason_is_an_engine_error_not_a_stop():
    def no_reason(i, body):
        payload = _completion(body["n"])
        for ch in payload["choices"]:
            ch["finish_reason"] = None
        return 200, payload

    with pytest.raises(EngineError, match="expected a finish reason") as exc:
        FaultServer(no_reason).engine().generate([REQ])
    assert not isinstance(exc.value, TransientEngineError)


def test_a_hung_server_call_is_retried_once_then_rejected_as_timeout():
    from pipeline.engines.config import RayConfig
    from pipeline.engines.pool import EnginePool
    from pipeline.records import EngineFailure

    def script(i, body):
        if "HANG" in json.dumps(body["messages"]):
            time.sleep(4)  # longer than the deadline below
        return 200, _completion(body["n"])

    server = FaultServer(script)
    engine = EngineConfig(
        kind="openai", call_timeout_s=1.0, openai=OpenAIEngineConfig(base_url=server.url, model="m", structured="off")
    )
    pool = EnginePool(engine, RayConfig())  # the openai engine runs in the driver: no Ray
    hung = GenerationRequest("h", (("user", "HANG"),), REQ.sampling)
    t0 = time.perf_counter()
    out = pool.generate(0, [REQ, hung])
    assert time.perf_counter() - t0 < 3.5  # two deadlines, not two hangs
    assert len(out) == 2, "expected one failure per request (REQ and the hung one)"
    assert all(isinstance(o, EngineFailure) and o.reason == "engine_timeout" and "twice" in o.detail for o in out)
    assert [c.texts for c in pool.generate(1, [REQ])] == [("text 0", "text 1")]  # the engine still serves after


def test_the_structured_outputs_probe_fails_on_a_server_that_ignores_the_field():
    """A server that drops `structured_outputs` still answers the probe's yes/no question: that must not pass."""
    seen = []

    def ignores(i, body):
        seen.append(body)
        payload = _completion(body["n"])
        payload["choices"][0]["message"]["content"] = "Yes"
        return 200, payload

    server = FaultServer(ignores)
    engine = OpenAIEngine(EngineConfig(kind="openai", openai=OpenAIEngineConfig(base_url=server.url, model="m")))
    engine.warmup()
    assert seen[0]["structured_outputs"]["choice"] == ["qz-7", "vk-3"] and engine.structured is False

    def honours(i, body):
        payload = _completion(body["n"])
        if "structured_outputs" in body:
            payload["choices"][0]["message"]["content"] = body["structured_outputs"]["choice"][1]
        return 200, payload

    engine = OpenAIEngine(
        EngineConfig(kind="openai", openai=OpenAIEngineConfig(base_url=FaultServer(honours).url, model="m"))
    )
    engine.warmup()
    assert engine.structured is True


def test_a_ray_data_client_raises_the_servers_fault_as_its_own_error(ray_session, tmp_path):
    """ray.clients: a part fails in a Ray Data worker (the server answers 500 past the retries); the driver gets a
    TransientEngineError (what the stage task retries on), not Ray's wrapper, and no part is committed."""
    from pipeline.config import load_config
    from pipeline.kinds import kind_of
    from pipeline.run import generate as steps
    from pipeline.run.store import store_of
    from pipeline.run.stream import stream_parts

    def down_after_warmup(i, body):
        return (200, _completion(body["n"])) if body["messages"][-1]["content"] == "Hi" else (500, {"error": "down"})

    server = FaultServer(down_after_warmup)
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": "a", "caption": "A brown dog runs on the beach."}\n', encoding="utf-8")
    engine = {"kind": "openai", "openai": {"base_url": server.url, "model": "m", "structured": "off", "max_retries": 0}}
    cfg = load_config(
        None, {"input": {"path": inp}, "output": {"dir": tmp_path / "ds"}, "engine": engine, "ray": {"clients": 1}}
    )
    kind = kind_of("negatives")
    with store_of(cfg, "negatives") as store:
        [block] = steps.blocks(steps.start(kind, cfg), store)
        stage = steps.plan_stage(kind, block, store, "generate")
        with pytest.raises(TransientEngineError, match="still failing after retries"):
            stream_parts(kind, block, store, stage.pending)
    assert not list((tmp_path / "ds" / "raw").glob("*.arrow"))
