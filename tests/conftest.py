"""Session fixtures: real Ray, real Prefect (test harness), the real embedded model loaded once."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def coco_captions(n: int, offset: int = 0) -> list[dict]:
    """Real COCO-train captions from ../shared (first caption of each image)."""
    path = SHARED / "coco_captions" / "test.jsonl"
    assert path.exists(), f"expected the shared seed data at {path}; tests read real COCO captions from there"
    rows = []
    with path.open() as fh:
        for line in fh:
            r = json.loads(line)
            rows.append({"id": r["file_name"].rsplit("_", 1)[-1].split(".")[0], "caption": r["captions"]["object"][0],
                         "image": r["file_name"]})
    return rows[offset : offset + n]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from pipeline.config import RayConfig
    from pipeline.engines.pool import ensure_ray

    ensure_ray(RayConfig())
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_session():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def embedded_engine():
    from pipeline.config import EngineConfig
    from pipeline.engines.embedded import EmbeddedEngine

    return EmbeddedEngine(EngineConfig(batch_size=8))


@pytest.fixture(scope="session")
def negatives_run(tmp_path_factory, ray_session, prefect_session):
    """One real generation (10 COCO captions + 1 bad row, SmolLM2 through Ray and Prefect) per session;
    its dataset also feeds the trainer's integration tests. Returns (RunConfig, summary)."""
    from flows.negatives import negatives_flow
    from pipeline.config import load_config

    root = tmp_path_factory.mktemp("flow")
    inp = write_jsonl(root / "in.jsonl", coco_captions(10) + [{"id": "bad", "caption": " "}])
    cfg = load_config(None, {"input": {"path": inp}, "output": {"dir": root / "ds", "units_per_part": 32}})
    return cfg, negatives_flow(cfg.model_dump(mode="json"))


@pytest.fixture(scope="session")
def text_scorers(tmp_path_factory):
    """The filter stage's real scorers (MiniLM embeddings, SmolLM2 log-likelihood), cached in a temp folder."""
    from pipeline.config import FilterConfig, bundled_gguf
    from pipeline.filters.scorers import TextScorers

    return TextScorers(FilterConfig(), bundled_gguf(), cache_root=tmp_path_factory.mktemp("scores"))
