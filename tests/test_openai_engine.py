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


def _auth(key: str | None = None) -> dict:
    return {"Authorization": f"Bearer {key or os.environ['OPENAI_API_KEY']}"}


def _post(url: str, body: dict | bytes, headers: dict | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        url + "/chat/completions", data, {"Content-Type": "application/json", **_auth(), **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_models_and_chat_completions(openai_server):
    url, model = openai_server
    served = json.loads(urllib.request.urlopen(urllib.request.Request(url + "/models", headers=_auth())).read())[
        "data"
    ][0]["id"]
    model = model or served
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Name a color."}],
        "n": 2,
        "max_tokens": 8,
        "temperature": 0.7,
        "seed": 5,
    }
    status, out = _post(url, body)
    assert status == 200 and len(out["choices"]) == 2 and out["usage"]["completion_tokens"] > 0
    assert all(c["finish_reason"] in ("stop", "length") for c in out["choices"])
    assert _post(url, body)[1]["choices"] == out["choices"]  # seeded: the same texts again


@pytest.mark.skipif(not OURS, reason="checks contrastgen serve's own refusals")
def test_serve_refuses_what_it_cannot_honour(openai_server):
    status, out = _post(openai_server[0], {"messages": [{"role": "user", "content": "x"}], "stop": ["END"]})
    assert status == 400 and "stop" in out["detail"]


@pytest.mark.skipif(not OURS, reason="checks contrastgen serve's own key and size checks")
def test_serve_checks_the_key_on_every_request_and_caps_the_body(openai_server):
    url = openai_server[0]
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}

    def get(path: str, headers: dict) -> int:
        try:
            return urllib.request.urlopen(
                urllib.request.Request(path if "://" in path else url + path, headers=headers), timeout=30
            ).status
        except urllib.error.HTTPError as e:
            return e.code

    assert get("/models", {}) == 401 and get("/models", _auth("wrong")) == 401 and get("/models", _auth()) == 200
    status, out = _post(url, body, {"Authorization": "Bearer wrong"})
    assert status == 401 and "CONTRASTGEN_API_KEY" in out["detail"]
    assert get(url.removesuffix("/v1") + "/health", {}) == 200  # the health check stays open, like vLLM's
    status, out = _post_unread(url, b'{"messages": [' + b" " * (1 << 20) + b"]}")
    assert status == 413 and "at most" in out["detail"]


def _post_unread(url: str, body: bytes) -> tuple[int, dict]:
    """POST ``body`` over a raw socket and read the answer even when the server answers before reading the body
    and closes (what a body cap does): the client's send then fails with a broken pipe, and urllib raises that
    instead of returning the response the server already sent."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(url)
    head = (
        f"POST {u.path}/chat/completions HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
        f"Authorization: {_auth()['Authorization']}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((u.hostname, u.port), timeout=60) as sock:
        try:
            sock.sendall(head.encode() + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole body was sent
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    reply = b"".join(chunks)
    status = int(reply.split(b" ", 2)[1])
    return status, json.loads(reply.split(b"\r\n\r\n", 1)[1])


def test_openai_engine_with_a_wrong_key_says_which_variable_to_set(openai_server, monkeypatch):
    from pipeline.engines.openai_compat import OpenAIEngine
    from pipeline.errors import EngineError

    url, model = openai_server
    monkeypatch.setenv("CG_WRONG_KEY", "not-the-key")
    cfg = load_config(
        None,
        {
            "engine": {
                "kind": "openai",
                "openai": {
                    "base_url": url,
                    "api_key_env": "CG_WRONG_KEY",
                    "max_retries": 0,
                    **({"model": model} if model else {}),
                },
            }
        },
    )
    with pytest.raises(EngineError, match=r"refused the API key.*\$CG_WRONG_KEY"):
        OpenAIEngine(cfg.engine).warmup()


def test_a_negatives_run_through_the_openai_engine_stopped_by_ctrl_c_resumes_to_the_same_dataset(
    openai_server, negatives_run, prefect_session, tmp_path
):
    """The same input as the in-process session run, generated over HTTP by the CLI with Ray Data clients, stopped
    by Ctrl-C (SIGINT to the process group) after its first part: exit 130 within 30 s, one line, nothing left
    running. The rerun finishes: every unit once, provenance says openai, and against `contrastgen serve` the
    outcome equals the in-process run's (same model, same seeds)."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import session_prefect_env, stderr_lines, stop_after_parts
    from tests.test_resume import _session_ray

    url, model = openai_server
    inp = write_jsonl(tmp_path / "in.jsonl", coco_captions(10) + [{"id": "bad", "caption": " "}])
    conf = tmp_path / "run.yaml"
    conf.write_text(
        json.dumps(
            {
                "output": {"units_per_part": 8},
                "ray": {"clients": 2},
                "engine": {"kind": "openai", "openai": {"base_url": url, **({"model": model} if model else {})}},
            }
        )
    )
    out = tmp_path / "ds"
    cmd = [
        str(Path(sys.executable).parent / "contrastgen"),
        "generate",
        "negatives",
        "--input",
        str(inp),
        "--out",
        str(out),
        "--config",
        str(conf),
        "--json",
    ]
    rc, err, seconds = stop_after_parts(cmd, out, signal.SIGINT, group=True)
    lines = stderr_lines(err)
    assert rc == 130 and seconds < 30 and "Traceback" not in err, (rc, seconds, err[-3000:])
    assert len(lines) == 1 and lines[0].startswith("contrastgen: stopped by SIGINT after "), err[-3000:]
    done = len(list((out / "raw").glob("part-*.arrow")))
    # the rerun joins the session's Ray and Prefect (the stopped run had its own of each, which Ctrl-C had to reach)
    rerun = subprocess.run(
        [*cmd, *_session_ray()], capture_output=True, text=True, timeout=900, env=session_prefect_env()
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["reused"] >= 8 * done - 8 and summary["generated"] == summary["units"] - summary["reused"] > 0
    keys = [
        k
        for p in sorted((out / "raw").glob("part-*.arrow"))
        for k in pa.ipc.open_stream(p.read_bytes()).read_all().column("unit_key").to_pylist()
    ]
    assert len(keys) == len(set(keys)) == summary["units"]  # every unit once
    assert not {"engine_crash", "engine_timeout"} & set(summary["rejected_by_reason"])  # a stop is not a fault
    table = pa.concat_tables(
        pa.ipc.open_stream(p.read_bytes()).read_all() for p in sorted((out / "data").glob("*.arrow"))
    )
    assert set(table.column("engine").to_pylist()) == {"openai"} and min(table.column("tokens_out").to_pylist()) > 0
    if OURS:
        _, base = negatives_run
        for key in ("units", "kept", "rejected", "filtered", "tokens_out", "rejected_by_reason", "splits"):
            assert summary[key] == base[key], key


def test_ray_data_clients_make_the_same_dataset_and_survive_a_killed_worker(
    openai_server, negatives_run, prefect_session, tmp_path
):
    """ray.clients: a stage's parts stream through a Ray Data worker that is its own HTTP client and commits its own
    parts. SIGKILLed while a part is in flight, the worker is restarted by Ray Data and the part runs again: every
    unit once, and (against `contrastgen serve`) the same dataset as the in-process run. ray.scorers: the filter
    stage's model scores come from a Ray Data scorer, into a fresh cache, and decide the same."""
    import signal
    import threading
    import time

    import psutil

    from flows.generate import generate_flow

    url, model = openai_server
    inp = write_jsonl(tmp_path / "in.jsonl", coco_captions(10) + [{"id": "bad", "caption": " "}])
    engine = {"kind": "openai", "openai": {"base_url": url, **({"model": model} if model else {})}}
    out = tmp_path / "ds"
    scores = tmp_path / "scores"  # a fresh cache: every model score is computed by the Ray Data scorers
    cfg = load_config(
        None,
        {
            "input": {"path": inp},
            "output": {"dir": out, "units_per_part": 32},
            "engine": engine,
            "ray": {"clients": 1, "scorers": 1},
            "filters": {"negatives": {"semantic": {"cache_dir": scores}}},
        },
    )
    killed: list[int] = []
    parts_at_kill: list[int] = []

    def kill_a_client_mid_run() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not list((out / "raw").glob("part-*.arrow")):
            time.sleep(0.05)
        for p in psutil.process_iter(["cmdline"]):
            if "MapBatches(run_parts)" in " ".join(p.info["cmdline"] or []):  # a part worker's title while it works
                p.send_signal(signal.SIGKILL)
                killed.append(p.pid)
        parts_at_kill.append(len(list((out / "raw").glob("part-*.arrow"))))

    watcher = threading.Thread(target=kill_a_client_mid_run, daemon=True)
    watcher.start()
    summary = generate_flow("negatives", cfg.model_dump(mode="json"))
    watcher.join(5)
    assert killed, "the test meant to kill the Ray Data client while it generated"
    assert parts_at_kill[0] < -(-summary["units"] // 32), "the kill came after the last part: it tested nothing"
    keys = [
        k
        for p in sorted((out / "raw").glob("part-*.arrow"))
        for k in pa.ipc.open_stream(p.read_bytes()).read_all().column("unit_key").to_pylist()
    ]
    assert len(keys) == len(set(keys)) == summary["units"] == summary["generated"]
    assert list(scores.rglob("part-*.arrow")), "the scorers wrote no cache part"
    if OURS:
        _, base = negatives_run
        for key in ("units", "kept", "rejected", "filtered", "tokens_out", "rejected_by_reason", "splits"):
            assert summary[key] == base[key], key
