"""bench/scale.py's measuring parts and bench/instant_engine.py (benchmarks only), without running the pipeline:
the instant engine answers as the load generator does, with the pipeline's model id; the driver's CPU is read
from an exited, unreaped process; the per-stage CPU interpolation; the instant path's config."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import instant_engine  # noqa: E402
import loadserver  # noqa: E402
import scale  # noqa: E402

sys.path[:] = [
    p for p in sys.path if p != str(BENCH)
]  # bench/ has filters.py, engines.py, view.py: keep them out of later imports
from pipeline.engines.config import EngineConfig  # noqa: E402
from pipeline.records import GenerationRequest, Sampling  # noqa: E402
from pipeline.text.templates import SLOT  # noqa: E402


def _requests(n_captions: int = 12) -> tuple[list[GenerationRequest], list[tuple]]:
    """Negatives requests as the pipeline renders them (system text, user template with the caption), for every
    task template in edit and rewrite mode, and what the load generator answers to each."""
    index = loadserver.load_task_index()
    reqs, expected = [], []
    for i in range(n_captions):
        cap = scale.caption(i)
        for system, (tpl, mode) in sorted(index.items()):
            s = Sampling(0.7, 0.95, 40, 2, 1000 + i)
            reqs.append(
                GenerationRequest(f"k{len(reqs)}", (("system", system), ("user", tpl.user.replace(SLOT, cap))), s)
            )
            expected.append((tpl, mode, cap, s.seed))
    return reqs, expected


def test_instant_engine_answers_as_the_load_generator(monkeypatch):
    monkeypatch.setenv(instant_engine.INVALID_RATE_ENV, "0.1")
    monkeypatch.delenv(instant_engine.STATS_ENV, raising=False)
    cfg = EngineConfig(kind="plugin", plugin="instant_engine:InstantEngine")
    eng = instant_engine.InstantEngine(cfg)
    assert eng.name == "instant (bench only)" and eng.model_id == cfg.model_id()
    reqs, expected = _requests()
    out = eng.generate(reqs)
    assert [c.key for c in out] == [r.key for r in reqs]
    assert out, "expected a completion per rendered request (12 captions x every template's system text)"
    for c, (tpl, mode, cap, seed) in zip(out, expected):
        texts = tuple(loadserver.answer(tpl, mode, cap, seed, i, 0.1) for i in range(2))
        # a second line is cut at the one-line stop, as a server does; an over-long text at max_tokens
        assert all(t == w.split("\n", 1)[0] or r == "length" for t, w, r in zip(c.texts, texts, c.finish_reasons))
        assert set(c.finish_reasons) <= {"stop", "newline", "length"}


def test_instant_engine_stats_files(tmp_path, monkeypatch):
    monkeypatch.setenv(instant_engine.STATS_ENV, str(tmp_path))
    eng = instant_engine.InstantEngine(EngineConfig(kind="plugin", plugin="instant_engine:InstantEngine"))
    reqs, _ = _requests(1)
    eng.generate(reqs[:3])
    eng.generate(reqs[3:5])
    st = instant_engine.read_stats(tmp_path)
    assert st["replicas"] == 1 and st["calls"] == 2 and st["requests"] == 5
    assert st["built"] <= st["first_call"] <= st["last_call"]


def test_driver_cpu_is_read_from_the_exited_process():
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    # the child burns 0.3 s itself and starts a grandchild that burns 0.3 s more: only the first is its own
    code = burn + f"\nimport subprocess, sys\nsubprocess.run([sys.executable, '-c', {burn!r}])"
    proc = subprocess.Popen([sys.executable, "-c", code])
    assert scale.wait_unreaped(proc, 60)
    own = scale.own_cpu_s(proc.pid)
    assert proc.wait() == 0
    assert 0.3 <= own < 0.55  # interpreter start included, the grandchild's 0.3 s not


def test_cpu_at_interpolates_between_polls():
    p = scale.Proc(0, "driver", "")
    p.cpu_samples = [(10.0, 0.0), (12.0, 1.0), (14.0, 3.0)]
    assert p.cpu_at(9.0) == 0.0 and p.cpu_at(11.0) == pytest.approx(0.5)
    assert p.cpu_at(13.0) == pytest.approx(2.0) and p.cpu_at(20.0) == 3.0


def test_instant_config_and_environment(tmp_path):
    scale.config_yaml(tmp_path / "run.yaml", None, tmp_path / "cache", 256, "instant", 2)
    cfg = json.loads((tmp_path / "run.yaml").read_text())
    assert cfg["engine"] == {"kind": "plugin", "plugin": "instant_engine:InstantEngine"}
    assert cfg["ray"] == {"workers": 2}
    env = scale.cli_env("tok", tmp_path, tmp_path)
    first = env["PYTHONPATH"].split(":")[:2]
    assert first == [str(scale.REPO), str(BENCH)]
    t = time.time()
    assert scale.imported_pipeline(env) == str(scale.REPO / "pipeline" / "__init__.py")
    assert time.time() - t < 60
