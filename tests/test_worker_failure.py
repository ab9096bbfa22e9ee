"""Worker failure on a real local multi-actor Ray: an engine actor killed mid-part (the injected fault) is restarted
by Ray and runs the part's requests again one at a time (the same texts), and a run whose actor dies finishes
with every unit exactly once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
import ray

from pipeline.config import load_config
from pipeline.engines.config import EngineConfig, RayConfig
from pipeline.engines.pool import EnginePool
from pipeline.records import GenerationRequest, Sampling
from tests.conftest import coco_captions, write_jsonl

pytestmark = pytest.mark.integration
ENGINE = EngineConfig(batch_size=8)


def _requests(n: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            f"k{i}",
            (("user", f"Write one sentence about the number {i}."),),
            Sampling(0.7, 0.95, 24, 1, i, stop_at_newline=False),
        )
        for i in range(n)
    ]


def _kill_when_busy(actor, delay_s: float) -> threading.Thread:
    def kill():
        time.sleep(delay_s)
        ray.kill(actor, no_restart=False)  # like a node's OOM killer: Ray may restart it

    t = threading.Thread(target=kill)
    t.start()
    return t


def test_killed_actor_reruns_its_part_after_a_restart(ray_session, embedded_engine):
    pool = EnginePool(ENGINE, RayConfig(workers=2))
    reqs = _requests(12)  # about 2 s of work for the int8 engine: the kill at 0.3 s lands mid-part
    expected = [c.texts for c in pool.generate(1, reqs)]  # actor 1, healthy
    before = ray.get(pool.actors[0].pid.remote())
    killer = _kill_when_busy(pool.actors[0], 0.3)
    got = pool.generate(0, reqs)  # starts on actor 0, which dies mid-part; rerun request by request once it is back
    killer.join()
    assert [c.key for c in got] == [r.key for r in reqs]
    assert [c.texts for c in got] == expected  # per-request seeds: the same texts whichever actor, alone or batched
    assert _pid_when_back(pool.actors[0]) != before  # Ray restarted it (a new process) for later parts


def _pid_when_back(actor, timeout_s: float = 300) -> int:
    deadline = time.time() + timeout_s
    while True:
        try:
            return ray.get(actor.pid.remote(), timeout=30)
        except ray.exceptions.ActorUnavailableError:  # still restarting (loading the model)
            assert time.time() < deadline, "the killed actor was not restarted"
            time.sleep(1)


def _raw_keys(root: Path) -> list[str]:
    keys = []
    for part in sorted((root / "raw").glob("part-*.arrow")):
        keys += pa.ipc.open_stream(part.read_bytes()).read_all().column("unit_key").to_pylist()
    return keys


def test_run_with_a_killed_actor_loses_and_duplicates_nothing(ray_session, prefect_session, tmp_path):
    from flows.generate import generate_flow

    inp = write_jsonl(tmp_path / "in.jsonl", coco_captions(10) + [{"id": "bad", "caption": " "}])
    out = tmp_path / "ds"
    cfg = load_config(
        None, {"input": {"path": inp}, "output": {"dir": out, "units_per_part": 32}, "ray": {"workers": 2}}
    )
    pool = EnginePool(cfg.engine, cfg.ray)  # the flow's pool finds these same named actors
    victim = pool.actors[0]

    def kill_after_first_part():
        deadline = time.time() + 600
        while not list((out / "raw").glob("part-*.arrow")) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        ray.kill(victim, no_restart=False)

    killer = threading.Thread(target=kill_after_first_part)
    killer.start()
    summary = generate_flow("negatives", cfg.model_dump(mode="json"))
    killer.join()
    keys = _raw_keys(out)
    assert len(keys) == len(set(keys)) == summary["units"] == summary["generated"]  # none lost, none twice
    assert summary["kept"] > 0 and summary["rejected_by_reason"].get("caption_empty", 0) <= 1
