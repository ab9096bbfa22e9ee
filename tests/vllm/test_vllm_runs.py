"""`contrastgen generate negatives --engine vllm` through the Ray actor pool, end to end; and a SIGKILL-then-resume
run on the vllm engine (the killed driver joins the session's Ray, so the loaded engine actor outlives it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from tests.conftest import coco_captions, session_prefect_env, write_jsonl
from tests.test_resume import _session_ray, kill_then_resume, planned_negatives
from tests.vllm.conftest import ENGINE

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "contrastgen")


def _config(tmp_path: Path, units_per_part: int | None = None) -> Path:
    """The default part size on vLLM is 256 units: one engine call whose prefill vLLM must split into steps."""
    conf = tmp_path / "run.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "engine": ENGINE,
                "output": {"units_per_part": units_per_part},
                "negatives": {"types": ["swap_obj", "replace_att"]},
            }
        )
    )
    return conf


def test_a_negatives_run_on_vllm_through_the_actor_pool(vllm_pool, model_dir, prefect_session, tmp_path, capsys):
    from pipeline.cli import main

    inp = write_jsonl(tmp_path / "in.jsonl", coco_captions(6, offset=40))
    out = tmp_path / "ds"
    capsys.readouterr()
    rc = main(
        ["generate", "negatives", "--input", str(inp), "--out", str(out), "--config", str(_config(tmp_path)), "--json"]
    )
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and s["units"] == 18 and s["generated"] == 18 and s["kept"] > 0, s
    rows = pa.concat_tables(
        [
            pa.ipc.open_stream((out / sh["path"]).read_bytes()).read_all()
            for sh in json.loads((out / "manifest.json").read_text())["shards"]
            if sh["split"] in ("train", "test") and sh["rows"]
        ]
    )
    assert set(rows.column("engine").to_pylist()) == {"vllm"}
    assert set(rows.column("model").to_pylist()) == {"SmolLM2-135M-Instruct.Q4_1.gguf"}  # the bundled model, converted
    assert min(rows.column("tokens_out").to_pylist()) > 0 and min(rows.column("tokens_in").to_pylist()) > 0
    card = (out / "README.md").read_text()
    assert "vllm" in card and "swap_obj" in card


def test_sigkill_then_resume_on_vllm(vllm_pool, model_dir, prefect_session, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", coco_captions(8, offset=60))
    conf = _config(tmp_path, units_per_part=2)
    out = tmp_path / "killed"
    cmd = [
        CLI,
        "generate",
        "negatives",
        "--input",
        str(inp),
        "--out",
        str(out),
        "--config",
        str(conf),
        *_session_ray(),
        "--json",
    ]
    _, keys = kill_then_resume(cmd, out, tmp_path, 24, session_prefect_env())
    _, planned = planned_negatives(conf, inp, tmp_path)
    assert len(keys) == len(set(keys)) == 24 and set(keys) == planned  # none lost, none duplicated
