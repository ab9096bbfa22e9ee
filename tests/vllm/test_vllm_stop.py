"""Ctrl-C on a real `contrastgen generate negatives --engine vllm` run (issue 33: stopping is an operation, not a
crash): the console script, with its own local Ray and vLLM EngineCore, gets SIGINT on its process group as a
terminal sends it once the first part is committed; it ends within 30 s with exit 130 and the one stop line, leaves
no process of the run (EngineCore included), and the same command run again finishes the rest, every unit once.

One engine start of its own: the stopped run's, in its own Ray. It cannot join the session's Ray as the SIGKILL run
of tests/vllm/test_vllm_runs.py does: a stop closes the pool, which kills its replicas (there, the session's shared
engine). The rerun is the same command joined to the session's Ray (``--ray-address``), so it finds the session's
loaded engine by its config's name instead of loading vLLM a second time: resuming reads the store, not the engine.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pytest
import yaml

from tests.conftest import coco_captions, stderr_lines, stop_after_parts, write_jsonl
from tests.conftest import raw_keys as _raw_keys
from tests.test_resume import _session_ray, planned_negatives
from tests.vllm.conftest import ENGINE

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "contrastgen")
MARK = "CONTRASTGEN_TEST_STOP_RUN"  # in the runs' environment: every process of a run inherits it (Ray's, vLLM's)


def _vllm_processes() -> dict[int, tuple[psutil.Process, str]]:
    """vLLM's live processes on this machine (EngineCore, its workers) by the titles vLLM gives them: pid ->
    (process, title)."""
    found = {}
    for p in psutil.process_iter(["name", "cmdline", "status"]):
        title = " ".join(p.info["cmdline"] or []) or p.info["name"] or ""
        if ("VLLM::" in title or "EngineCore" in title) and p.info["status"] != psutil.STATUS_ZOMBIE:
            found[p.pid] = (p, title)
    return found


def _of_run(p: psutil.Process, mark: str) -> bool:
    """``p`` is of the run marked ``mark`` (or its environment cannot be read): a vLLM test of another session on
    this machine carries no mark and is left out."""
    try:
        return p.environ().get(MARK) == mark
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def _marked(mark: str) -> list[psutil.Process]:
    """Live processes whose environment carries ``MARK=mark``: the runs' own, wherever Ray or vLLM reparented them."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(MARK) == mark and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:  # gone, or not ours to read
            pass
    return found


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE  # is_running: this process, not a reused pid
    except psutil.Error:
        return False


def _describe(procs) -> list:
    out = []
    for p in procs:
        try:
            out.append((p.pid, p.name(), p.cmdline()[:3]))
        except psutil.Error:
            pass
    return out


def test_ctrl_c_stops_a_vllm_run_in_one_line_and_the_rerun_resumes(vllm_pool, model_dir, tmp_path):
    t_test = time.monotonic()
    inp = write_jsonl(tmp_path / "in.jsonl", coco_captions(6, offset=80))
    conf = tmp_path / "run.yaml"
    # two units a part: the replica has four calls in flight, so parts are still running when the first commits
    conf.write_text(
        yaml.safe_dump(
            {"engine": ENGINE, "output": {"units_per_part": 2}, "negatives": {"types": ["swap_obj", "replace_att"]}}
        )
    )
    out = tmp_path / "stopped"
    cmd = [CLI, "generate", "negatives", "--input", str(inp), "--out", str(out), "--config", str(conf), "--json"]
    _, planned = planned_negatives(conf, inp, tmp_path)
    units = len(planned)
    mark = os.urandom(8).hex()
    env = {**os.environ, MARK: mark, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)  # the run starts its own local Ray
    before, seen, stopped, errors = set(_vllm_processes()), {}, threading.Event(), []

    def watch() -> None:  # the run's vLLM processes as they appear, by title and mark
        while not stopped.wait(0.5):
            try:  # a process table read that fails once (a process gone mid-read) must not end the watch
                seen.update(
                    {
                        pid: pt
                        for pid, pt in _vllm_processes().items()
                        if pid not in before and pid not in seen and _of_run(pt[0], mark)
                    }
                )
            except Exception as exc:  # noqa: BLE001 - kept for the assertion's message
                errors.append(repr(exc))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        # stop_after_parts records the run's process tree (supervisor, worker, Ray, Prefect, replica, EngineCore)
        # once the first part exists, sends SIGINT to the supervisor's process group, and asserts none of it is left
        rc, err, seconds = stop_after_parts(cmd, out, signal.SIGINT, group=True, env=env, log=tmp_path / "stop.err")
        t_stopped = time.monotonic()
        stopped.set()
        watcher.join()
        assert rc == 130 and seconds < 30, (rc, seconds, err[-3000:])
        assert "Traceback" not in err, err[-3000:]
        lines = stderr_lines(err)
        m = re.fullmatch(
            rf"contrastgen: stopped by SIGINT after (\d+) of {units} units; (\d+) parts are committed; "
            r"run the same command again to resume",
            lines[-1] if lines else "",
        )
        assert m and len(lines) == 1, err[-3000:]

        assert any("EngineCore" in title for _, title in seen.values()), (seen, errors[:3])  # the run's engine ran
        new = [p for pid, (p, _) in _vllm_processes().items() if pid not in before and _of_run(p, mark)]
        left = new + [p for p, _ in seen.values() if _alive(p)]
        assert not left, f"vLLM processes of the stopped run are left: {_describe(left)}"
        left = _marked(mark)
        assert not left, f"processes of the stopped run are left: {_describe(left)}"

        keys, parts = _raw_keys(out), sorted((out / "raw").glob("part-*.arrow"))
        done = len(keys)
        assert 0 < done < units and len(keys) == len(set(keys)) and not (out / "manifest.json").exists(), (done, units)
        failed = sum(
            pa.ipc.open_stream(p.read_bytes()).read_all().num_rows for p in (out / "raw").glob("failed-*.arrow")
        )
        assert (int(m[1]), int(m[2])) == (done + failed, len(parts)), (m[0], done, failed)  # the line reads the store

        rejoin = [*cmd, *_session_ray()]  # the session's loaded engine
        rerun = subprocess.run(rejoin, check=False, capture_output=True, text=True, env=env, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        summary = json.loads(rerun.stdout.strip().splitlines()[-1])
        assert (summary["units"], summary["reused"], summary["generated"]) == (units, done, units - done), summary
        keys = _raw_keys(out)
        assert len(keys) == len(set(keys)) == units and set(keys) == planned  # none lost, none duplicated
        assert not _marked(mark), _describe(_marked(mark))
        print(
            f"\nvllm stop: {units} units, {done} committed before the stop, stop {seconds:.1f} s after SIGINT; "
            f"stopped run {t_stopped - t_test:.0f} s, rerun {time.monotonic() - t_stopped:.0f} s"
        )
    finally:  # a failed assertion must not leave a vLLM run eating the machine
        stopped.set()
        for p in _marked(mark):
            try:
                p.kill()
            except psutil.Error:
                pass
