"""Stopping a run is an operation, not a crash: SIGINT (Ctrl-C), SIGTERM (a scheduler) and a Prefect cancel take
one path, end in seconds with one line and exit 128 + the signal (130, 143), and leave a run that the same
command resumes.

Two processes. ``contrastgen generate`` and ``contrastgen train`` run as a small **supervisor** (:func:`supervise`)
and a **worker** in a session of its own: a terminal's Ctrl-C reaches the whole foreground process group, and
without the new session it would also reach Prefect's temporary server and every Ray process the run started,
which would then die mid-call and be taken for faults (a connection refused, a poison request). The supervisor
forwards the first SIGINT or SIGTERM to the worker alone. A second signal, or a worker still running
``GRACE_S`` after the first, makes it kill the worker's whole session at once; parts are committed
atomically, so even that loses no committed unit and leaves no half part. When the worker ends, the supervisor
kills whatever is left in its session (Ray gives its workers process groups of their own, in the same session),
so nothing of the run outlives it.

In the worker, the first signal is only recorded (:func:`asked`) unless the main thread is in an :func:`armed`
scope (a flow body, a training run), where it raises :class:`Stopped` at once: out of a Ray Data stream, a wait on
engine replicas, a plan. ``Stopped`` is an ``Exception``: Prefect ends the task Failed and passes it on, the retry
policy never retries it (it is not a :class:`~pipeline.errors.TransientEngineError`), and the flow turns it into a
``Cancelled`` state carrying the one line. Between tasks and steps, :func:`check` raises it. A deployment's run
cancelled through the Prefect API gets SIGTERM from Prefect's runner and takes the same path (the flow body
installs these handlers over Prefect's own SIGTERM bridge, which would mark the run Crashed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

SUPERVISED = "CONTRASTGEN_SUPERVISED"  # set in the worker's environment by the supervisor
GRACE_S = 25.0  # the supervisor's limit after the first signal: a scheduler's grace is 30 s (Kubernetes' default)
SIGNALS = (signal.SIGINT, signal.SIGTERM)
RESUME = "run the same command again to resume"


class Stopped(Exception):
    """The run was asked to stop (SIGINT, SIGTERM, a Prefect cancel). Not a fault: never retried or isolated."""

    def __init__(self, signum: int, line: str | None = None):
        self.signum = signum
        super().__init__(line or f"stopped by {signal_name(signum)}; {RESUME}")

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_code(signum: int) -> int:
    """As shells report a process a signal ended: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum)


_asked: int | None = None
_armed = 0
_quiet = False


def quiet_after_stop() -> None:
    """From the first signal on, drop every log record (the CLI without ``--verbose``): what Ray, Ray Data and Prefect
    say while a run stops is the stop's consequence, and the stop's one line says it."""
    global _quiet
    _quiet = True


def asked() -> int | None:
    """The signal that asked this process to stop, if one did."""
    return _asked


def check() -> None:
    """Raise :class:`Stopped` if a stop was asked for."""
    if _asked is not None:
        raise Stopped(_asked)


@contextlib.contextmanager
def armed() -> Iterator[None]:
    """A scope where the first signal raises :class:`Stopped` in the main thread at once (and where a stop asked for
    before it raises on entry)."""
    global _armed
    check()
    _armed += 1
    try:
        yield
    finally:
        _armed -= 1


def _on_signal(signum: int, frame) -> None:
    global _asked
    if _asked is None:
        _asked = signum
        if _quiet:
            logging.disable(logging.CRITICAL)
        if _armed:
            raise Stopped(signum)
        return
    if not os.environ.get(SUPERVISED):
        raise KeyboardInterrupt  # a second signal and no supervisor to stop the process group: stop at once
    # supervised: the supervisor kills the worker's session on a second signal; nothing to do here


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """This module's handlers for SIGINT and SIGTERM over the scope (restored after); a no-op off the main thread
    (signals reach only the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.signal(s, _on_signal) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def install() -> None:
    """This module's handlers for good (a supervised worker, first thing: a signal before any run starts is a stop)."""
    for s in SIGNALS:
        signal.signal(s, _on_signal)


def reset() -> None:
    """Forget a stop (a process that runs several commands, such as a test session)."""
    global _asked
    _asked = None
    logging.disable(logging.NOTSET)


def line(signum: int, committed: int, total: int, parts: int, more: bool) -> str:
    """The one line a stopped run ends with: how far it got (``committed`` units in ``parts`` part files, read from
    the store; ``total`` units planned, ``more``: blocks not planned yet), and how to go on."""
    by = f"stopped by {signal_name(signum)}"
    if more or not total:
        return f"{by} with {committed} units committed in {parts} parts ({total} units planned so far); {RESUME}"
    return f"{by} after {committed} of {total} units; {parts} parts are committed; {RESUME}"


def _die_with_parent() -> None:
    """In the worker before exec: SIGTERM when the supervisor dies (Linux), so a killed supervisor leaves no worker."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (the worker's): its process group, and Ray's workers, which Ray puts
    in process groups of their own within the session."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, signal.SIGKILL)
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()) if os.path.isdir("/proc") else ():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if pid != os.getpid() and os.getsid(pid) == sid:
                os.kill(pid, signal.SIGKILL)


def supervise(argv: list[str], grace_s: float = GRACE_S, program: list[str] | None = None) -> int:
    """Run ``contrastgen ARGV`` (``program``: another command, for tests) as a worker in a new session; forward the
    first SIGINT/SIGTERM to it; stop its session at once on a second signal or ``grace_s`` after the first; return
    its exit code."""
    env = {**os.environ, SUPERVISED: "1"}
    worker = subprocess.Popen(
        program or [sys.executable, "-m", "pipeline.entry", *argv],
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    got: list[tuple[int, float]] = []

    def forward(signum: int, frame) -> None:
        got.append((signum, time.monotonic()))
        if len(got) == 1:
            with contextlib.suppress(ProcessLookupError):
                worker.send_signal(signum)

    for s in SIGNALS:
        signal.signal(s, forward)
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            rc = worker.wait(timeout=0.2)
            break
        if len(got) > 1 or (got and time.monotonic() - got[0][1] > grace_s):
            _kill_session(worker.pid)
            worker.wait()
            why = (
                f"a second {signal_name(got[1][0])}"
                if len(got) > 1
                else f"{signal_name(got[0][0])}, not done after {grace_s:.0f} s"
            )
            print(
                f"contrastgen: stopped at once by {why}; every part committed before it is kept; {RESUME}",
                file=sys.stderr,
                flush=True,
            )
            return exit_code(got[0][0])
    _kill_session(worker.pid)  # anything of the run left in its process group (Ray's and Prefect's processes)
    if rc < 0:  # the worker itself was killed (by the OOM killer, say): say so in one line
        print(
            f"contrastgen: the run's process was killed by {signal_name(-rc)}; every part committed before it is "
            f"kept; {RESUME}",
            file=sys.stderr,
            flush=True,
        )
        return exit_code(-rc)
    return rc
