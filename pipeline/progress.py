"""Live progress of a long step (generate, filter, train), on stderr so ``--json`` keeps stdout clean.

A :class:`Meter` counts work done against a total (which may grow as blocks are planned) and what came of it:
output tokens (tok/s), parts, and per-type kept / rejected counts. On a terminal it draws a ``rich`` progress
bar; otherwise (a CI log, a pipe) it writes one plain line every ``every_s`` seconds and one at the end::

    generate: 640/4500 units (14%), 10 parts, 231 tok/s, ETA 4m12s; valid 512, rejected 71 (swap_obj 70/9, ...)

Counts are added from worker threads (a part ends on one of the pool's slots), so every update takes a lock.
:func:`quiet_libraries` keeps library notices that tell the user nothing (Ray's token-auth warning, Prefect's
temporary-server notice and per-task lines, sqlite's "database is locked" retries) out of the default output.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Meter:
    """Progress of one step: ``advance`` from any thread, ``close`` once (also as a context manager)."""

    def __init__(
        self,
        label: str,
        total: int = 0,
        unit: str = "units",
        *,
        stream: TextIO | None = None,
        every_s: float = 15.0,
        live: bool | None = None,
        clock=time.monotonic,
        silent: bool = False,
        kept_word: str = "valid",
    ):
        self.label, self.total, self.unit, self.every_s, self.clock = label, total, unit, every_s, clock
        self.stream = stream or sys.stderr
        self.done = self.parts = self.tokens = 0
        self.kept: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.info: dict[str, str] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._start = self._last = clock()
        self.kept_word = kept_word  # "valid" while generating (parsed and checked), "kept" after the filters
        self.silent = silent  # counts only (a training rank other than 0)
        live = (self.stream.isatty() if live is None else live) and not silent
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        if live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                console=Console(file=self.stream),
                transient=False,
            )
            self._task = self._bar.add_task(label, total=total or None, status="")
            self._bar.start()

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def begin(self) -> None:
        """Rates and the ETA count from now (after an engine start), not from the meter's creation."""
        with self._lock:
            self._start = self.clock()

    def grow(self, n: int) -> None:
        """``n`` more units to do (a block or a stage was planned)."""
        with self._lock:
            self.total += n
            self._refresh(False)

    def advance(
        self,
        n: int = 0,
        *,
        tokens: int = 0,
        parts: int = 0,
        kept: Mapping[str, int] | None = None,
        rejected: Mapping[str, int] | None = None,
        **info: object,
    ) -> None:
        """``n`` units done, with their output tokens, parts, per-type kept / rejected counts and free fields
        (``loss=0.41``) shown as they are."""
        with self._lock:
            self.done, self.tokens, self.parts = self.done + n, self.tokens + tokens, self.parts + parts
            self.kept.update(kept or {})
            self.rejected.update(rejected or {})
            self.info.update({k: str(v) for k, v in info.items()})
            self._refresh(False)

    def status(self) -> str:
        """Everything but done/total: parts, tok/s, ETA, kept and rejected (per type), free fields."""
        elapsed = max(self.clock() - self._start, 1e-9)
        bits = [f"{self.parts} part{'s' if self.parts > 1 else ''}"] if self.parts else []
        if self.tokens:
            bits.append(f"{self.tokens / elapsed:.0f} tok/s")
        if self.done and self.total > self.done:
            bits.append(f"ETA {_duration((self.total - self.done) * elapsed / self.done)}")
        bits += [f"{k} {v}" for k, v in self.info.items()]
        out = ", ".join(bits)
        if self.kept or self.rejected:
            types = sorted(set(self.kept) | set(self.rejected))
            per = ", ".join(f"{t} {self.kept[t]}/{self.rejected[t]}" for t in types)
            out += (
                f"; {self.kept_word} {sum(self.kept.values())}, rejected {sum(self.rejected.values())} "
                f"({self.kept_word}/rejected by type: {per})"
            )
        return out

    def line(self) -> str:
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        total = f"/{self.total}" if self.total else ""
        status = self.status()
        return f"{self.label}: {self.done}{total} {self.unit}{pct}" + (f", {status}" if status else "")

    def _refresh(self, final: bool) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self.done, total=self.total or None, status=self.status())
            return
        now = self.clock()
        if not self.silent and (final or now - self._last >= self.every_s):
            self._last = now
            print(self.line() + (f" in {_duration(now - self._start)}" if final else ""), file=self.stream, flush=True)

    def quiet(self) -> None:
        """Close without a final line (a stopped run ends with the stop's line instead)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._bar is not None:
                    self._bar.stop()
                    self._bar = None

    def close(self) -> None:
        """The final line (or the bar's last state); a second call does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._bar is not None:
                self._refresh(False)
                self._bar.stop()
                self._bar = None
            else:
                self._refresh(True)


class _DropNoise(logging.Filter):
    """Library records that tell a user of the CLI nothing (kept with ``--verbose``)."""

    NOISE = (
        "Token authentication is enabled",
        "Started a local Ray instance",
        "temporary server",
        "database is locked",
        "Finished in state Completed",
        "Beginning flow run",
        "execution finished in",
        "Progress bars disabled",
        "Starting execution of Dataset",
        "Execution plan of Dataset",
        "Registered dataset logger",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(n in msg for n in self.NOISE)


_DROP = _DropNoise()


def quiet_libraries() -> None:
    """Keep Ray's and Prefect's notices out of the default output: call it before they are imported (Prefect reads
    its log level then) and again after (their handlers exist then)."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bar reads it at import
    drop = _DROP
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")  # a Dataset's start, end and progress-bar notices, per stage
    for name in (
        "ray",
        "ray.data",
        "prefect",
        "prefect.server",
        "prefect.flow_runs",
        "prefect.task_runs",
        "sqlalchemy",
        "ray._private.authentication.authentication_token_setup",
        "ray._private.worker",
    ):
        logger = logging.getLogger(name)
        logger.addFilter(drop)
        for handler in logger.handlers:
            handler.addFilter(drop)
