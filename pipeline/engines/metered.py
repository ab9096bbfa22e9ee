"""What an engine call cost its replica: engine-seconds per completion and the replica's accelerator.

A replica times each call it runs (:class:`ReplicaClock`) and divides the call's seconds over its completions by
their tokens (:func:`share`); each completion then carries ``engine_s`` and ``accelerator``, and its raw part
records them (issue 35: the cost of an accepted row). Where a replica works on several calls at once (vLLM's one
continuous batch), a second of wall time is shared by the calls in flight, so the engine-seconds of every call a
replica ran add up to the time it was busy, not to the sum of overlapping wall times.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable

from pipeline.records import Completion


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


def share(completions: list[Completion], seconds: float, accelerator: str) -> list[Completion]:
    """``completions`` of one call with the call's ``seconds`` divided over them by tokens (prompt and output: a
    prompt is processed, an output decoded token by token); equally where no completion counted a token.

    >>> from pipeline.records import Completion
    >>> cs = [Completion("a", ("x",), 10, 30, 0.0), Completion("b", ("y",), 10, 10, 0.0)]
    >>> [(c.engine_s, c.accelerator) for c in share(cs, 6.0, "cpu")]
    [(4.0, 'cpu'), (2.0, 'cpu')]
    """
    tokens = [c.tokens_in + c.tokens_out for c in completions]
    total = sum(tokens)
    return [
        replace(c, engine_s=seconds * (t / total if total else 1 / len(completions)), accelerator=accelerator)
        for c, t in zip(completions, tokens)
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
