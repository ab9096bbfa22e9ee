"""SIGKILL a real CLI run mid-generation, rerun it, and compare with an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import psutil
import pyarrow as pa
import pytest

from pipeline.config import load_config
from pipeline.inputs import read_captions
from pipeline.kinds import negatives as task
from tests.conftest import coco_captions, session_prefect_env, write_jsonl
from tests.conftest import raw_keys as _raw_keys

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "contrastgen")


def _kill_after_two_parts(cmd: list[str], out: Path, log_path: Path, env: dict | None = None) -> dict:
    """Start the CLI (in ``env``, default this process's), SIGKILL it and its children once two raw parts exist;
    return the environment it ran with."""
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + 400
        while len(list((out / "raw").glob("part-*.arrow"))) < 2:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, "no raw part appeared in time"
            time.sleep(0.2)
        _kill_tree(proc)
    return env


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the CLI and everything it started (its local Ray; Prefect's temporary server where it has one): no
    cleanup runs."""
    family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    for pid in family:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def _settled(out: Path, quiet_s: float = 3.0, limit_s: float = 60.0) -> None:
    """Wait until no raw part has appeared for ``quiet_s``: with ``--ray-address`` the part workers run on a cluster
    outside the killed process tree, and one finishing its part as Ray ends the dead driver's job still commits it
    (whole: the rerun reuses it)."""
    seen, since, deadline = -1, time.monotonic(), time.monotonic() + limit_s
    while time.monotonic() < deadline:
        now = len(list((out / "raw").glob("part-*.arrow")))
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.2)


def kill_then_resume(
    cmd: list[str], out: Path, tmp_path: Path, units: int, env: dict | None = None
) -> tuple[dict, list[str]]:
    """SIGKILL ``cmd`` (run in ``env``) after two raw parts, rerun it: the rerun reuses every finished unit and
    generates only the rest, the parts finished before the kill stay byte-identical; returns the rerun's summary
    and raw keys."""
    env = _kill_after_two_parts(cmd, out, tmp_path / "first.log", env)
    _settled(out)
    before = {p.name: p.read_bytes() for p in (out / "raw").glob("part-*.arrow")}
    done = len(_raw_keys(out))
    assert 0 < done < units and not (out / "manifest.json").exists()
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert (summary["units"], summary["reused"], summary["generated"]) == (units, done, units - done)
    for name, data in before.items():  # parts finished before the kill are untouched
        assert (out / "raw" / name).read_bytes() == data
    return summary, _raw_keys(out)


def _session_ray() -> list[str]:
    """``--ray-address`` of the session's Ray: a run joined to it finds the engine replicas loaded there (named by
    their config) instead of starting Ray and loading the model twice a test. The killed driver is then the
    user's driver on a cluster; a run that kills its own local Ray is
    test_sigkill_then_resume_loses_and_duplicates_nothing."""
    import ray

    return ["--ray-address", ray.get_runtime_context().gcs_address]


def planned_negatives(conf: Path, inp: Path, tmp_path: Path):
    """The config of ``conf`` on ``inp`` (output in tmp_path/clean) and the unit keys it plans."""
    cfg = load_config(conf, {"input": {"path": inp}, "output": {"dir": tmp_path / "clean"}})
    return cfg, {u.key for u in task.plan_units(read_captions(cfg.input)[0], cfg, task.templates_for(cfg))}


NEGATIVES = "negatives: {types: [swap_obj, replace_obj, add_att]}\noutput: {units_per_part: 4}\n"


@pytest.fixture(scope="module")
def negatives_inputs(tmp_path_factory, ray_session, prefect_session):
    """(input, config file, the uninterrupted run's config, its summary): 6 captions, 24 units, 4 a part."""
    from flows.generate import generate_flow

    root = tmp_path_factory.mktemp("resume")
    inp = write_jsonl(root / "in.jsonl", coco_captions(6, offset=20))
    conf = root / "run.yaml"
    conf.write_text(NEGATIVES)
    cfg = load_config(conf, {"input": {"path": inp}, "output": {"dir": root / "clean"}})
    return inp, conf, cfg, generate_flow("negatives", cfg.model_dump(mode="json"))


def _same_as_clean(out: Path, summary: dict, negatives_inputs) -> None:
    """Every planned unit once, and the rows of the uninterrupted run."""
    inp, conf, cfg, clean = negatives_inputs
    keys = _raw_keys(out)
    planned = {u.key for u in task.plan_units(read_captions(cfg.input)[0], cfg, task.templates_for(cfg))}
    assert len(keys) == len(set(keys)) == 24 and set(keys) == planned  # none lost, none duplicated
    assert set(_raw_keys(cfg.output.dir)) == set(keys)
    assert clean["kept"] == summary["kept"]
    ids = lambda root: sorted(r["id"] for split in datasets.load_dataset(str(root)).values() for r in split)  # noqa: E731
    assert ids(out) == ids(cfg.output.dir)  # per-unit seeds: same rows whatever the batching
    # the resumed dataset's cost is the whole dataset's (reused units at what they cost when made), this run's apart
    whole, ref = summary["cost"]["total"], clean["cost"]["total"]
    assert (whole["units"], whole["tokens_in"], whole["tokens_out"], whole["kept"]) == (
        ref["units"],
        ref["tokens_in"],
        ref["tokens_out"],
        ref["kept"],
    )
    recorded = 0.0  # what every raw part of the resumed dataset says its units took, the killed run's included
    for part in (out / "raw").glob("part-*.arrow"):
        with pa.memory_map(str(part)) as src:
            recorded += sum(pa.ipc.open_stream(src).read_all().column("engine_s").to_pylist())
    assert whole["engine_s"] == pytest.approx(recorded, abs=0.01)
    own = summary["cost"]["this_run"]
    assert own["units"] == summary["generated"] < whole["units"] and own["engine_s"] < whole["engine_s"]
    # Tokens above are exact (issue 35's 5%). Engine-seconds are a measurement: two runs of the same 24 units time
    # them twice, and on this 2-core box they differed by up to a third (wall time: 15.8 vs 19.8, 18.2 vs 13.3;
    # CPU-seconds, pipeline.engines.metered: 8.99 vs 8.80 alone, 9.2 vs 11.3 with a training job beside them,
    # 2026-12-07). What is asserted exactly is the accounting (the total is what every raw part recorded); the
    # timing within a band that a busy CI host does not break.
    assert 0.5 * ref["engine_s"] <= whole["engine_s"] <= 2.0 * ref["engine_s"], (whole, ref)


def test_sigkill_then_resume_loses_and_duplicates_nothing(tmp_path, negatives_inputs):
    inp, conf, _, _ = negatives_inputs
    out = tmp_path / "killed"
    cmd = [CLI, "generate", "negatives", "--input", str(inp), "--out", str(out), "--config", str(conf), "--json"]
    summary, _ = kill_then_resume(cmd, out, tmp_path, 24, session_prefect_env())
    _same_as_clean(out, summary, negatives_inputs)


def test_ctrl_c_and_sigterm_stop_in_one_line_and_the_rerun_resumes(tmp_path, negatives_inputs):
    """Ctrl-C as a terminal sends it (SIGINT to the process group: Ray's and Prefect's processes get it too), then
    SIGTERM as a scheduler sends it (to the pid alone): each run stops within 30 s with one line and exit 130 /
    143, no traceback, nothing of it left running; the third run finishes with every unit once and the rows of
    the uninterrupted run."""
    import re

    from tests.conftest import stderr_lines, stop_after_parts

    inp, conf, _, _ = negatives_inputs
    out = tmp_path / "stopped"
    cmd = [CLI, "generate", "negatives", "--input", str(inp), "--out", str(out), "--config", str(conf), "--json"]
    done = 0
    for sig, group, code in ((signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)):
        rc, err, seconds = stop_after_parts(cmd, out, sig, group)
        name = signal.Signals(sig).name
        assert rc == code and seconds < 30, (rc, seconds, err[-3000:])
        lines = stderr_lines(err)
        assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
        assert re.fullmatch(
            rf"contrastgen: stopped by {name} after \d+ of 24 units; \d+ parts are committed; "
            r"run the same command again to resume",
            lines[0],
        ), lines[0]
        assert len(_raw_keys(out)) > done and not (out / "manifest.json").exists()
        done = len(_raw_keys(out))
        keys = _raw_keys(out)
        assert len(keys) == len(set(keys)) and len(keys) % 4 == 0  # whole parts only, none twice
    # the rerun joins the session's Ray and Prefect: it finds the replicas of this config loaded (resuming reads the
    # store, not the engine); the two stopped runs had their own of each, which the signals had to reach
    rerun = subprocess.run(
        [*cmd, *_session_ray()], capture_output=True, text=True, timeout=600, env=session_prefect_env()
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert (summary["reused"], summary["generated"]) == (done, 24 - done)
    assert not {"engine_crash", "engine_timeout"} & set(summary["rejected_by_reason"])  # a stop is not a fault
    _same_as_clean(out, summary, negatives_inputs)


def test_rationales_sigkill_then_resume_loses_and_duplicates_nothing(tmp_path, ray_session, prefect_session):
    from tests.conftest import REPO

    inp = tmp_path / "q.jsonl"
    inp.write_text("".join((REPO / "data" / "questions.jsonl").open().readlines()[:3]))
    conf = tmp_path / "run.yaml"
    conf.write_text("rationales: {k: 2, max_tokens: 80, adversarial: {n: 1}}\noutput: {units_per_part: 1}\n")
    out = tmp_path / "killed"
    cmd = [
        CLI,
        "generate",
        "rationales",
        "--input",
        str(inp),
        "--out",
        str(out),
        "--config",
        str(conf),
        "--json",
        *_session_ray(),
    ]
    env = _kill_after_two_parts(cmd, out, tmp_path / "first.log", session_prefect_env())
    _settled(out)
    done_before = len(_raw_keys(out))
    assert 0 < done_before < 6 and not (out / "manifest.json").exists()
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert (summary["units"], summary["reused"], summary["generated"]) == (6, done_before, 6 - done_before)

    from flows.generate import generate_flow
    from pipeline.inputs import read_questions
    from pipeline.kinds import rationales as rtask

    cfg = load_config(conf, {"input": {"path": inp}, "output": {"dir": tmp_path / "clean"}})
    planned = {u.key for u in rtask.plan_units(read_questions(cfg.input)[0], cfg, rtask.templates_for(cfg))}
    keys = _raw_keys(out)
    assert len(keys) == len(set(keys)) == 6 and set(keys) == planned  # none lost, none duplicated
    clean = generate_flow("rationales", cfg.model_dump(mode="json"))  # the uninterrupted run
    assert (clean["kept"], clean["rejected"]) == (summary["kept"], summary["rejected"])
    assert _outcome(out) == _outcome(
        tmp_path / "clean"
    )  # per-sample seeds: same rows and rejections whatever the batching


def _outcome(root: Path) -> tuple[list, list]:
    """(ids of kept rows, (unit, seed, reason) of rejected samples) read from the shards."""
    tables = {
        sub: [pa.ipc.open_stream(pa.memory_map(str(p))).read_all() for p in sorted((root / sub).glob("*.arrow"))]
        for sub in ("data", "rejected")
    }
    ids = sorted(i for t in tables["data"] for i in t["id"].to_pylist())
    rejected = sorted(
        (r["unit_key"] or "", r["seed"] or 0, r["reason"]) for t in tables["rejected"] for r in t.to_pylist()
    )
    return ids, rejected


def test_pairs_sigkill_then_resume_loses_and_duplicates_nothing(tmp_path, ray_session, prefect_session):
    """Killed during the candidate stage, the rerun finishes that stage and runs the judge: the same units and
    rows as an uninterrupted run."""
    from tests.conftest import snli_premises

    inp = write_jsonl(tmp_path / "s.jsonl", snli_premises(3))
    conf = tmp_path / "run.yaml"
    conf.write_text("output: {units_per_part: 1}\n")
    out = tmp_path / "killed"
    cmd = [
        CLI,
        "generate",
        "pairs",
        "--input",
        str(inp),
        "--out",
        str(out),
        "--config",
        str(conf),
        "--json",
        *_session_ray(),
    ]
    env = _kill_after_two_parts(cmd, out, tmp_path / "first.log", session_prefect_env())
    _settled(out)
    done_before = len(_raw_keys(out))
    assert 0 < done_before < 6 and not (out / "manifest.json").exists()
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["reused"] == done_before and summary["generated"] == summary["units"] - done_before

    from flows.generate import generate_flow

    cfg = load_config(conf, {"input": {"path": inp}, "output": {"dir": tmp_path / "clean"}})
    clean = generate_flow("pairs", cfg.model_dump(mode="json"))
    keys = _raw_keys(out)
    assert len(keys) == len(set(keys)) == clean["units"] and set(keys) == set(_raw_keys(tmp_path / "clean"))
    assert _outcome(out) == _outcome(tmp_path / "clean")
