"""What an engine call cost its replica: engine-seconds per completion and the replica's accelerator.

A replica times each call it runs (:class:`ReplicaClock`) and divides the call's seconds over its completions by
their tokens (:func:`share`); each completion then carries ``engine_s`` and ``accelerator``, and its raw part
records them (issue 35: the cost of an accepted row). Where a replica works on several calls at once (vLLM's one
continuous batch), a second of wall time is shared by the calls in flight, so the engine-seconds of every call a
replica ran add up to the time it was busy, not to the sum of overlapping wall times.

On a CPU replica that runs one call at a time (the embedded engine: one process, ``threads`` cores), a call's
engine-seconds are the replica process's CPU-seconds during the call over its threads (:func:`cpu_timed`): what the
call takes with its cores to itself. Wall time there counts whatever else the host runs (on a 2-core box, the run's
own part workers starting up made a small sample's calls 1.6-1.9x slower than the same calls later), and a
forecast from a sample (``generate --estimate``) would carry that noise to the whole input. An engine that
computes in other processes (vLLM, also on CPU) keeps the replica's wall time.

Some of a call's time is done once for many calls: the embedded engine computes a prompt prefix's KV on a task's
first call on a replica and keeps it (``EmbeddedEngine.setup_s`` counts it). Units carry their share of it apart
(``setup_s``, part of ``engine_s``), because it does not grow with the input: a forecast from a sample that is
nearly all first calls scales the rest and adds it once (:mod:`pipeline.run.estimate`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable, TypeVar

from pipeline.records import Completion

T = TypeVar("T")
R = TypeVar("R")


class ReplicaClock:
    """Busy time of one replica shared fairly between the calls in flight: a "virtual clock" that advances at
    1/n of wall time while n calls run. A call's engine-seconds are the virtual time between its start and its end.

    >>> t = iter([0.0, 0.0, 0.0, 1.0, 3.0])
    >>> c = ReplicaClock(lambda: next(t))
    >>> a, b = c.start(), c.start()  # two calls from t=0
    >>> round(c.stop(a), 3)           # a ends at t=1: half of that second was its own
    0.5
    >>> round(c.stop(b), 3)           # b ends at t=3: half of [0, 1] plus all of [1, 3]
    2.5
    """

    def __init__(self, now: Callable[[], float] = time.perf_counter):
        self._now = now
        self._last = now()
        self._virtual = 0.0
        self._running = 0

    def _advance(self) -> None:
        t = self._now()
        if self._running:
            self._virtual += (t - self._last) / self._running
        self._last = t

    def start(self) -> float:
        """A call starts: its virtual start time (for :meth:`stop`)."""
        self._advance()
        self._running += 1
        return self._virtual

    def stop(self, started: float) -> float:
        """A call ends: its engine-seconds."""
        self._advance()
        self._running -= 1
        return self._virtual - started


def cpu_timed(fn: Callable[[T], R], arg: T) -> tuple[R, float]:
    """``fn(arg)`` and the CPU-seconds this process used meanwhile (all its threads: torch's intra-op pool too).

    >>> out, cpu = cpu_timed(sum, range(10**5))
    >>> out, cpu >= 0.0
    (4999950000, True)
    """
    start = time.process_time()
    out = fn(arg)
    return out, time.process_time() - start


def share(completions: list[Completion], seconds: float, accelerator: str, setup: float = 0.0) -> list[Completion]:
    """``completions`` of one call with the call's ``seconds`` divided over them by tokens (prompt and output: a
    prompt is processed, an output decoded token by token); equally where no completion counted a token. ``setup``:
    the part of ``seconds`` the replica spent on work it does once for many calls (the embedded engine's KV of a
    prompt prefix, computed on a task's first call and kept), divided the same way into ``setup_s``.

    >>> from pipeline.records import Completion
    >>> cs = [Completion("a", ("x",), 10, 30, 0.0), Completion("b", ("y",), 10, 10, 0.0)]
    >>> [(c.engine_s, c.accelerator, c.setup_s) for c in share(cs, 6.0, "cpu", setup=1.5)]
    [(4.0, 'cpu', 1.0), (2.0, 'cpu', 0.5)]
    """
    tokens = [c.tokens_in + c.tokens_out for c in completions]
    total = sum(tokens)
    parts = [t / total if total else 1 / len(completions) for t in tokens]
    return [
        replace(c, engine_s=seconds * p, accelerator=accelerator, setup_s=setup * p) for c, p in zip(completions, parts)
    ]


def accelerator(device: str, gpus: int = 1) -> str:
    """What a replica runs on: ``cpu``, or the GPU's name and how many a replica holds (``NVIDIA H100 x1``);
    ``device`` as torch names it (an engine that runs elsewhere, the openai client, passes ``api``)."""
    if not device.startswith("cuda"):
        return device
    import torch

    if not torch.cuda.is_available():  # a tensor-parallel replica's GPUs are its vLLM workers'
        return f"{device} x{gpus}"
    return f"{torch.cuda.get_device_name(0)} x{gpus}"
