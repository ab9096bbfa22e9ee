"""`contrastgen serve` under hostile requests and engine faults: one client cannot hurt the others.

A real server on 127.0.0.1 (`--workers 2`, the real bundled model, faults injected through
$CONTRASTGEN_SERVE_INJECT_FAULTS, which is never set by default): a request past the context gets vLLM's 400
while the requests sent with it get their texts; an engine error, or an engine process ending, inside a batch
fails only the request that caused it. The batcher's splitting and halving are unit-tested first.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipeline.records import Completion, GenerationRequest, Sampling
from pipeline.serve_workers import (
    ERROR_MARKER,
    EXIT_MARKER,
    FAULTS_ENV,
    Batcher,
    Failed,
    _CallFailed,
)
from tests.conftest import start_server

GOOD = ["Name a color.", "Name a fruit.", "Name a city.", "Name an animal."]


def _req(key: str, text: str = "x") -> GenerationRequest:
    return GenerationRequest(key, (("user", text),), Sampling(0.7, 1.0, 4, 1, 1))


class _Recorder:
    """An engine process stand-in for the batcher's own logic (no model): records each call's keys, answers at once,
    and fails every call that holds ``bad``."""

    def __init__(self, index: int, bad: str = "bad"):
        self.index, self.bad, self.calls = index, bad, []

    def call(self, requests):
        self.calls.append([r.key for r in requests])
        if any(r.key == self.bad for r in requests):
            raise _CallFailed("boom")
        return [Completion(r.key, (r.key,), 1, 1, 0.0, ("stop",)) for r in requests]


def _burst(batcher: Batcher, keys: list[str]) -> list:
    async def go():
        task = asyncio.create_task(batcher.run())
        outs = await asyncio.gather(*(batcher.submit(_req(k)) for k in keys))
        task.cancel()
        return outs

    try:
        return asyncio.run(go())
    finally:
        batcher.threads.shutdown()


def test_a_burst_is_split_over_the_free_engine_processes():
    engines = [_Recorder(0), _Recorder(1)]
    keys = [f"k{i}" for i in range(40)]
    outs = _burst(Batcher(engines, max_batch=256, min_share=8), keys)
    assert [o.texts[0] for o in outs] == keys
    assert all(e.calls for e in engines), [e.calls for e in engines]  # both processes got part of the burst
    assert sorted(k for e in engines for c in e.calls for k in c) == sorted(keys)


def test_a_failed_batch_is_halved_down_to_the_request_that_fails_alone():
    engine = _Recorder(0)
    keys = [f"k{i}" for i in range(7)] + ["bad"]
    outs = _burst(Batcher([engine], max_batch=256, min_share=8), keys)
    assert [type(o) for o in outs] == [Completion] * 7 + [Failed] and outs[-1].error == "boom"
    assert engine.calls[0] == keys and engine.calls[-1] == ["bad"]
    assert len(engine.calls) <= 1 + 2 * 3  # halving: at most two calls a level, log2(8) levels


# --- a real server ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory):
    """(base URL, log path, server process) of `contrastgen serve --workers 2` with fault injection on."""
    cli = str(Path(sys.executable).parent / "contrastgen")
    env = {**os.environ, "CONTRASTGEN_API_KEY": os.environ["OPENAI_API_KEY"], FAULTS_ENV: "1"}
    log = tmp_path_factory.mktemp("serve-faults") / "serve.log"
    proc, url = start_server(lambda port: [cli, "serve", "--port", str(port), "--workers", "2"], log, env)
    yield url, log, proc
    proc.terminate()
    proc.wait(30)


def _post(url: str, content: str, max_tokens: int = 5) -> tuple[int, dict]:
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0.7, "seed": 3}
    req = urllib.request.Request(
        url + "/chat/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json", "Authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _together(url: str, posts: list[tuple[str, int]]) -> list[tuple[int, dict]]:
    """Send every (content, max_tokens) at the same moment (threads released together), so they share batches."""
    outs: list = [None] * len(posts)
    gate = threading.Barrier(len(posts))

    def one(i: int) -> None:
        gate.wait()
        outs[i] = _post(url, *posts[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(posts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return outs


def _text(out: tuple[int, dict]) -> str:
    assert out[0] == 200, out
    return out[1]["choices"][0]["message"]["content"]


def _engine_pids(proc) -> list[int]:
    import psutil

    return sorted(p.pid for p in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(p.cmdline()))


@pytest.mark.integration
def test_workers_2_serves_from_two_engine_processes_with_the_in_process_texts(fault_server, embedded_engine):
    url, log, proc = fault_server
    pids = _engine_pids(proc)
    assert len(pids) == 2, f"expected two engine processes under the server, found {pids}"
    started = re.search(r"2 engine process\(es\) \(pids (\d+), (\d+)\), 1 torch thread\(s\) each", log.read_text())
    assert started and sorted(map(int, started.groups())) == pids, log.read_text()[-2000:]
    served = [_text(o) for o in _together(url, [(g, 5) for g in GOOD])]
    reqs = [
        GenerationRequest(str(i), (("user", g),), Sampling(0.7, 1.0, 5, 1, 3, stop_at_newline=False))
        for i, g in enumerate(GOOD)
    ]
    assert served == [c.texts[0] for c in embedded_engine.generate(reqs)]


@pytest.mark.integration
def test_a_request_past_the_context_gets_a_400_and_the_others_their_texts(fault_server):
    url, log, _ = fault_server
    alone = [_text(_post(url, g)) for g in GOOD]
    outs = _together(url, [(g, 5) for g in GOOD] + [("Say hi.", 100_000_000)])
    assert [_text(o) for o in outs[:-1]] == alone
    status, body = outs[-1]
    assert status == 400, body
    assert re.fullmatch(
        r"This model's maximum context length is 8192 tokens\. However, you requested 1000000\d\d tokens "
        r"\(\d+ in the messages, 100000000 in the completion\)\. Please reduce the length of the messages "
        r"or completion\.",
        body["detail"],
    ), body
    assert "Traceback" not in log.read_text()


@pytest.mark.integration
def test_an_engine_error_in_a_batch_fails_only_its_request(fault_server):
    url, log, _ = fault_server
    alone = [_text(_post(url, g)) for g in GOOD]
    before = log.read_text()
    outs = _together(url, [(g, 5) for g in GOOD] + [(f"Name a color. {ERROR_MARKER}", 5)])
    assert [_text(o) for o in outs[:-1]] == alone
    status, body = outs[-1]
    assert (
        status == 500
        and "injected engine error" in body["detail"]
        and "batched with it were answered" in body["detail"]
    )
    new = log.read_text()[len(before) :]
    halved = [int(n) for n in re.findall(r"a batch of (\d+) requests failed", new)]
    assert halved and max(halved) >= 2, f"the marked request shared no batch: nothing was isolated\n{new}"
    assert "failed alone" in new


@pytest.mark.integration
def test_an_engine_process_that_ends_mid_batch_is_replaced_and_fails_only_its_request(fault_server):
    """As the OOM killer would: the process ends under the call, a new one loads, and only the request that ends
    it alone fails (last in this module: it replaces processes)."""
    url, _, proc = fault_server
    alone = _text(_post(url, GOOD[0]))
    before_pids = _engine_pids(proc)
    outs = _together(url, [(GOOD[0], 5), (f"Name a fruit. {EXIT_MARKER}", 5)])
    assert _text(outs[0]) == alone
    assert outs[1][0] == 500 and "engine process ended during the call" in outs[1][1]["detail"], outs[1]
    after = _engine_pids(proc)
    assert len(after) == 2 and after != before_pids, (before_pids, after)
    assert _text(_post(url, GOOD[0])) == alone
