"""The stop path's supervisor (pipeline/stop.py) with stand-in workers, real processes and real signals: a second
signal, or a worker still running after the grace period, kills the worker's whole session at once with one line;
a worker's own exit code passes through; nothing the worker started outlives it. The real runs stopped this way are
in tests/test_resume.py, test_openai_engine.py, test_deploy.py, train/test_train_stop.py, vllm/test_vllm_stop.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pipeline import stop

REPO = Path(__file__).resolve().parents[1]
# a worker that ignores SIGINT and SIGTERM (a run that does not stop), and starts a grandchild in a process group of
# its own (as Ray starts its workers) that ignores them too; it writes the grandchild's pid, then waits
STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGTERM, signal.SIG_IGN)
sleeper = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", sleeper], preexec_fn=os.setpgrp)
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(600 if sys.argv[2] == "wait" else 0.1)
"""


def _supervisor(tmp_path: Path, mode: str, grace_s: float) -> tuple[subprocess.Popen, int]:
    """A real supervisor process running the stand-in worker; returns it and the grandchild's pid."""
    pid_file = tmp_path / "grandchild.pid"
    code = (
        f"import sys; from pipeline.stop import supervise; "
        f"sys.exit(supervise([], grace_s={grace_s}, program=[sys.executable, '-c', {STUBBORN!r}, {str(pid_file)!r}, "
        f"{mode!r}]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text()):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "slow"
        time.sleep(0.05)
    return proc, int(pid_file.read_text())


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_second_ctrl_c_kills_the_workers_session_at_once(tmp_path):
    proc, grandchild = _supervisor(tmp_path, "wait", grace_s=60)
    os.killpg(
        proc.pid, signal.SIGINT
    )  # a terminal's Ctrl-C: the worker (own session) does not get it, it ignores it anyway
    time.sleep(1.0)
    assert proc.poll() is None  # the first one is forwarded, and this worker does not stop
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=10)
    assert proc.returncode == 130 and time.monotonic() - t0 < 5
    err = proc.stderr.read()
    assert err.strip().splitlines() == [
        f"contrastgen: stopped at once by a second SIGINT; every part committed before it is kept; {stop.RESUME}"
    ], err
    time.sleep(0.3)
    assert _gone(grandchild)  # in its own process group, but in the worker's session: killed too


def test_a_worker_still_running_after_the_grace_period_is_killed(tmp_path):
    proc, grandchild = _supervisor(tmp_path, "wait", grace_s=2)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)  # a scheduler's stop, to the pid alone
    proc.wait(timeout=20)
    assert proc.returncode == 143 and 2 <= time.monotonic() - t0 < 10
    assert "stopped at once by SIGTERM, not done after 2 s" in proc.stderr.read()
    time.sleep(0.3)
    assert _gone(grandchild)


def test_nothing_a_finished_worker_started_outlives_it(tmp_path):
    proc, grandchild = _supervisor(tmp_path, "exit", grace_s=60)
    proc.wait(timeout=20)
    assert proc.returncode == 0 and proc.stderr.read() == ""  # the worker's own exit code, no line
    time.sleep(0.3)
    assert _gone(grandchild)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_stopped_says_how_to_go_on_and_exits_as_a_shell_would(sig, code):
    exc = stop.Stopped(sig)
    assert exc.exit_code == code and str(exc) == f"stopped by {signal.Signals(sig).name}; {stop.RESUME}"
    assert stop.line(sig, 256, 900, 4, more=False) == (
        f"stopped by {signal.Signals(sig).name} after 256 of 900 units; 4 parts are committed; {stop.RESUME}"
    )
    assert "planned so far" in stop.line(sig, 256, 900, 4, more=True)
