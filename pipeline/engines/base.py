"""The engine interface (a Protocol: composition, not inheritance) and its one dispatch table."""

from __future__ import annotations

from typing import Callable, Protocol

from pipeline.config import EngineConfig
from pipeline.records import Completion, GenerationRequest


class Engine(Protocol):
    name: str  # recorded as provenance `engine`
    model_id: str  # recorded as provenance `model`

    def generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        """One completion per request, in request order, with ``request.sampling.n`` texts each."""
        ...

    def warmup(self) -> None:
        """Pay one-time start-up costs (first forward pass) before real work is timed."""
        ...


def _embedded(cfg: EngineConfig) -> Engine:
    from pipeline.engines.embedded import EmbeddedEngine

    return EmbeddedEngine(cfg)


ENGINES: dict[str, Callable[[EngineConfig], Engine]] = {"embedded": _embedded}


def build_engine(cfg: EngineConfig) -> Engine:
    return ENGINES[cfg.kind](cfg)
