"""Replica faults on a real local Ray of its own (a subprocess: ``ray.init(address="local", num_cpus=2)``; its flow
reports to the session's Prefect server) with the real embedded engine: a replica made slow
(``engine.inject_slow_replica_s``) takes few parts because the others pull the rest, a replica that can never be
placed (three one-CPU replicas on two CPUs) takes none and is reported once its ``start_timeout_s`` has passed,
and a pool none of whose replicas can be placed (each asks for a GPU this Ray has not) fails within
``start_timeout_s`` with one clear error."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import coco_captions, session_prefect_env, write_jsonl

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import pyarrow as pa
    import ray

    inp, root = Path(sys.argv[1]), Path(sys.argv[2])
    ray.init(address="local", num_cpus=2, namespace="contrastgen", include_dashboard=False, log_to_driver=False)
    from flows.generate import generate_flow
    from pipeline.config import load_config
    from pipeline.engines.pool import EnginePool
    from pipeline.errors import EngineError

    def config(out, **engine):
        return load_config(None, {"input": {"path": str(inp)}, "output": {"dir": str(out), "units_per_part": 2},
                                  "negatives": {"types": ["swap_obj"], "paraphrase": False},
                                  "sampling": {"max_tokens": 16}, "engine": {"batch_size": 8, **engine},
                                  "ray": {"workers": 3}})

    cfg = config(root / "ds", inject_slow_replica_s=10.0, start_timeout_s=30.0)
    started = time.time()
    pool = EnginePool(cfg.engine, cfg.ray)  # held here, the flow's pool finds the same named replicas and dispatcher
    summary = generate_flow("negatives", cfg.model_dump(mode="json"))
    took = time.time() - started
    states = ray.get(pool.dispatcher.states.remote())
    time.sleep(max(0.0, 35 - (time.time() - started)))  # past replica 2's start_timeout_s
    notes = ray.get(pool.dispatcher.drain_notes.remote())
    keys = [k for p in sorted((root / "ds" / "raw").glob("part-*.arrow"))
            for k in pa.ipc.open_stream(p.read_bytes()).read_all().column("unit_key").to_pylist()]
    t0 = time.time()
    pool.close()  # replica 2 never came up: it is killed, not waited for
    closed_s = time.time() - t0

    t0, error = time.time(), None
    try:  # each replica asks for a GPU, and this Ray has none: none is ever placed
        EnginePool(config(root / "none", start_timeout_s=8.0, device="cuda").engine, cfg.ray)
    except EngineError as exc:
        error = str(exc)
    print(json.dumps({"summary": summary, "states": states, "took": took, "notes": notes, "keys": len(keys),
                      "distinct": len(set(keys)), "error": error, "error_after_s": time.time() - t0,
                      "closed_s": closed_s}))
    ray.shutdown()
""")


def test_a_slow_replica_takes_few_parts_and_an_unplaceable_one_none(tmp_path, prefect_session):
    inp = write_jsonl(tmp_path / "in.jsonl", coco_captions(10))
    env = session_prefect_env(PYTHONPATH=str(REPO))
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(inp), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=REPO,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    s, states = out["summary"], out["states"]
    assert s["units"] == s["generated"] == 10 and out["keys"] == out["distinct"] == 10  # every unit exactly once
    (_, slow), (_, fast), (third, never) = states
    assert slow + fast == 5 and fast >= 3 and slow <= 2, (
        states
    )  # the fast replica pulled the parts the slow one could not
    assert third != "ready" and never == 0, states  # never placed: no part waited for it
    assert any("replica 2 did not come up within engine.start_timeout_s" in n for n in out["notes"]), out["notes"]
    assert out["error"] and "none did" in out["error"] and "ray status" in out["error"]  # one clear error
    assert out["error_after_s"] < 45  # start_timeout_s is 8 s: it fails then, not never
    assert out["closed_s"] < 30  # the pool's close does not wait its 60 s grace for the replica that never came up
