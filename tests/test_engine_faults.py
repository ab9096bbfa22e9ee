"""Poison requests and hung engines, injected into the real engine in real Ray actors (tests/engines/faulty.py):
a request that crashes its replica is isolated and rejected as ``engine_crash`` with one more restart; a call
past its deadline is retried once, then rejected as ``engine_timeout``; the rest of the run is kept."""

from __future__ import annotations

import hashlib

import pytest
import ray

from pipeline.config import load_config
from pipeline.engines import pool as pool_module
from pipeline.engines.config import EngineConfig, RayConfig
from pipeline.engines.pool import EnginePool
from pipeline.records import Completion, EngineFailure, GenerationRequest, Sampling
from tests.conftest import coco_captions, write_jsonl
from tests.engines.faulty import HANG, POISON, FaultyEngineActor, pid_log

pytestmark = pytest.mark.integration


def _faulty(monkeypatch, engine: EngineConfig) -> str:
    """Engine actors of this config are FaultyEngineActors from now on; returns their pid log (cleared)."""
    monkeypatch.setattr(pool_module, "EngineActor", FaultyEngineActor)
    blob = engine.model_dump_json()
    pid_log(blob).unlink(missing_ok=True)
    return blob


def _kill(engine: EngineConfig, n: int) -> None:
    tag = hashlib.sha256(engine.model_dump_json().encode()).hexdigest()[:12]
    for i in range(n):
        try:
            ray.kill(ray.get_actor(f"engine-{tag}-{i}", namespace=pool_module.NAMESPACE), no_restart=True)
        except ValueError:
            pass


def _req(i: int, text: str = "") -> GenerationRequest:
    return GenerationRequest(
        f"k{i}",
        (("user", f"Write one sentence about the number {i}. {text}"),),
        Sampling(0.7, 0.95, 16, 1, i, stop_at_newline=False),
    )


def test_a_poison_request_is_isolated_with_one_more_restart(ray_session, embedded_engine, monkeypatch):
    engine = EngineConfig(batch_size=8, call_timeout_s=600.0, start_timeout_s=300.0)
    blob = _faulty(monkeypatch, engine)
    try:
        pool = EnginePool(engine, RayConfig(workers=1))
        reqs = [_req(0), _req(1), _req(2, POISON), _req(3)]
        out = pool.generate(0, reqs)
        assert [o.key for o in out] == [r.key for r in reqs]
        assert isinstance(out[2], EngineFailure) and out[2].reason == "engine_crash" and "died" in out[2].detail
        healthy = embedded_engine.generate(
            [reqs[i] for i in (0, 1, 3)]
        )  # per-request seeds: same texts alone or batched
        assert [o.texts for o in out if isinstance(o, Completion)] == [c.texts for c in healthy]
        starts = pid_log(blob).read_text().split()
        assert len(starts) == 3  # the first start, the part's crash, the poison's own crash: no other replica touched
    finally:
        _kill(engine, 1)


def test_a_run_with_poison_and_a_hung_call_finishes(ray_session, prefect_session, monkeypatch, tmp_path):
    from flows.generate import generate_flow

    captions = coco_captions(5) + [
        {"id": "poison", "caption": f"a {POISON} dog on a red sofa"},
        {"id": "hang", "caption": f"a {HANG} cat under a blue table"},
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", captions)
    cfg = load_config(
        None,
        {
            "input": {"path": inp},
            "output": {"dir": tmp_path / "ds", "units_per_part": 3},
            "negatives": {"types": ["swap_obj"], "paraphrase": False},
            "engine": {"call_timeout_s": 15.0, "start_timeout_s": 300.0},
            "ray": {"workers": 1},
        },
    )
    # 15 s: a healthy part of 3 units takes 1-3 s here, so the deadline holds at 5x that; each wait on the hung
    # call costs the test this deadline (it was 30 s: 87 s a run, against 60 now)
    blob = _faulty(monkeypatch, cfg.engine)
    try:
        s = generate_flow("negatives", cfg.model_dump(mode="json"))  # returns: nothing wedges
    finally:
        _kill(cfg.engine, 1)
    assert (
        s["units"] == 7
        and s["rejected_by_reason"]["engine_crash"] == 1
        and s["rejected_by_reason"]["engine_timeout"] == 1
    )
    import datasets

    rejected = datasets.load_dataset(str(tmp_path / "ds"), "rejected")["rejected"]
    failed = {r["source_id"]: r for r in rejected if r["reason"].startswith("engine_")}
    assert failed["poison"]["reason"] == "engine_crash" and failed["hang"]["reason"] == "engine_timeout"
    assert "call_timeout_s" in failed["hang"]["detail"] and failed["poison"]["unit_key"]
    from pipeline.run.store import RunStore

    generated = {r.source_id for r in RunStore(tmp_path / "ds").read_raw()}
    assert generated == {c["id"] for c in captions[:5]}  # every other unit was generated and kept its result
    # start, poison part, poison alone, first timeout's kill; the second kill's restart may be cut by the cleanup
    assert len(pid_log(blob).read_text().split()) in (4, 5)
    again = generate_flow("negatives", cfg.model_dump(mode="json"))  # a rerun does not send them again
    assert again["generated"] == 0 and again["rejected_by_reason"] == s["rejected_by_reason"]
