"""An injected fault, not a fake engine: the real engine in a Ray actor that misbehaves on marked inputs.

A request whose messages hold ``POISON-REQUEST`` kills the actor's process (``os._exit``, as a segfault or a
CUDA fault would); one holding ``HANG-REQUEST`` never returns. Every other request goes to the real embedded
engine. Each start of an actor appends its pid to :func:`pid_log` (so a test can count restarts).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

import ray

POISON, HANG = "POISON-REQUEST", "HANG-REQUEST"


def pid_log(engine_json: str) -> Path:
    return (
        Path(tempfile.gettempdir()) / f"contrastgen-faulty-{hashlib.sha256(engine_json.encode()).hexdigest()[:12]}.pids"
    )


@ray.remote
class FaultyEngineActor:
    """Same interface as :class:`pipeline.engines.pool.EngineActor`."""

    def __init__(self, engine_json: str, threads: int, index: int = 0):
        import torch

        from pipeline.engines.base import build_engine
        from pipeline.engines.config import EngineConfig

        torch.set_num_threads(threads)
        self.engine = build_engine(EngineConfig.model_validate_json(engine_json))
        with pid_log(engine_json).open("a") as fh:
            fh.write(f"{os.getpid()}\n")

    def identity(self):
        return self.engine.name, self.engine.model_id

    def pid(self) -> int:
        return os.getpid()

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def generate(self, requests):
        text = " ".join(c for r in requests for _, c in r.messages)
        if POISON in text:
            os._exit(1)
        if HANG in text:
            time.sleep(3600)
        return self.engine.generate(requests)
