"""The engine interface (a Protocol: composition, not inheritance) and its one dispatch table."""

from __future__ import annotations

from typing import Callable, Protocol

from pipeline.engines.config import EngineConfig, EngineKind
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


def _openai(cfg: EngineConfig) -> Engine:
    from pipeline.engines.openai_compat import OpenAIEngine

    return OpenAIEngine(cfg)


def _vllm(cfg: EngineConfig) -> Engine:
    from pipeline.engines.vllm_engine import (
        VLLMEngine,  # imports vllm: only when this engine is selected
    )

    return VLLMEngine(cfg)


def _plugin(cfg: EngineConfig) -> Engine:
    """The class ``engine.plugin`` names ('module:Class'), built from the config."""
    import importlib

    from pipeline.errors import ConfigError

    module, _, name = (cfg.plugin or "").partition(":")
    try:
        return getattr(importlib.import_module(module), name)(cfg)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(
            f"engine.plugin: expected 'module:Class' of an importable Engine, found {cfg.plugin!r} "
            f"({exc}). Fix: name a class on the workers' Python path"
        ) from None


ENGINES: dict[EngineKind, Callable[[EngineConfig], Engine]] = {
    "embedded": _embedded,
    "openai": _openai,
    "vllm": _vllm,
    "plugin": _plugin,
}


def build_engine(cfg: EngineConfig) -> Engine:
    return ENGINES[cfg.kind](cfg)
