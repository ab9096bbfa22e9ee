"""Finalize's block passes on Ray tasks (a run of several blocks) publish the same bytes as the same passes in the
driver: the same raw parts finalized both ways give byte-identical shards, rejections and plan."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from pipeline.config import load_config
from pipeline.kinds import kind_of
from pipeline.run import generate as steps
from pipeline.run.common import Timing
from pipeline.run.store import store_of
from pipeline.shards.folder import MARKER
from tests.conftest import coco_captions, write_jsonl

pytestmark = pytest.mark.integration


def _digests(root) -> dict[str, str]:
    files = sorted((root / "data").glob("*.arrow")) + [root / "plan.arrow"]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_block_passes_on_ray_tasks_publish_what_the_driver_would(ray_session, prefect_session, tmp_path):
    from flows.generate import generate_flow

    inp = write_jsonl(tmp_path / "in.jsonl", coco_captions(5) + [{"id": "bad", "caption": " "}])
    settings = {
        "input": {"path": inp},
        "output": {"dir": tmp_path / "workers", "block_sources": 2, "units_per_part": 4},
        "negatives": {"types": ["swap_obj", "replace_att"]},
        "sampling": {"max_tokens": 24},
    }
    cfg = load_config(None, settings)
    summary = generate_flow("negatives", cfg.model_dump(mode="json"))  # 3 blocks: finalized on Ray tasks
    assert summary["units"] == 15 and summary["kept"] > 0
    driver = tmp_path / "driver"
    shutil.copytree(tmp_path / "workers" / "raw", driver / "raw")
    shutil.copy(tmp_path / "workers" / MARKER, driver / MARKER)  # the claim: a dataset of this kind, not published yet
    cfg = load_config(None, {**settings, "output": {**settings["output"], "dir": driver}})
    kind = kind_of("negatives")
    with store_of(cfg, "negatives") as store:
        ctx = steps.start(kind, cfg)
        here = steps.finalize(kind, ctx, store, Timing(), None, walk=steps.planned_blocks(kind, ctx, store))
    assert (here.kept, here.splits, here.rejected_by_reason) == (
        summary["kept"],
        summary["splits"],
        summary["rejected_by_reason"],
    )
    assert _digests(driver) == _digests(tmp_path / "workers")
