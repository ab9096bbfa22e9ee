"""The GPU path without vLLM: the embedded engine with device=cuda (any CUDA machine with PyTorch).

Runs only where CUDA exists (``pytest -m gpu``); this project's CI machines have none, so here it reports
as skipped with that reason. `bench/http_engine.py --device cuda` gives the throughput figure.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.engines.config import EngineConfig
from pipeline.records import GenerationRequest, Sampling

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]


def _requests() -> list[GenerationRequest]:
    return [
        GenerationRequest(
            f"k{i}", (("user", f"Describe a photo of {t} in one sentence."),), Sampling(0.0, 1.0, 24, 1, i)
        )
        for i, t in enumerate(["a dog on a beach", "two cups on a table", "a red bus"])
    ] + [GenerationRequest("s", (("user", "Write a short caption."),), Sampling(0.8, 0.95, 16, 3, 7))]


def test_embedded_engine_on_cuda_matches_cpu_greedy_and_samples_per_row():
    from pipeline.engines.embedded import EmbeddedEngine

    gpu = EmbeddedEngine(EngineConfig(device="cuda", dtype="float32", batch_size=8))
    assert next(gpu.model.parameters()).is_cuda
    out = gpu.generate(_requests())
    assert [c.key for c in out] == ["k0", "k1", "k2", "s"] and all(c.tokens_out > 0 for c in out)
    assert len(out[3].texts) == 3 and len(set(out[3].texts)) > 1  # one generator per sample
    assert out[3].texts == gpu.generate(_requests())[3].texts  # seeded: reproducible on the device
    cpu = EmbeddedEngine(EngineConfig(batch_size=8)).generate(_requests())
    same = sum(a.texts == b.texts for a, b in zip(out[:3], cpu[:3]))
    assert same >= 2  # greedy float32 agrees with CPU (a near-tie may flip one token)


def test_bfloat16_default_on_cuda():
    from pipeline.engines.embedded import EmbeddedEngine

    gpu = EmbeddedEngine(EngineConfig(device="cuda"))
    assert next(gpu.model.parameters()).dtype == torch.bfloat16
    assert gpu.generate(_requests()[:1])[0].tokens_out > 0
