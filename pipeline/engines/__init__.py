"""Engines turn :class:`GenerationRequest` batches into :class:`Completion` batches."""

from pipeline.engines.base import Engine, build_engine

__all__ = ["Engine", "build_engine"]
