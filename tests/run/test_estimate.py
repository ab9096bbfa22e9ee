"""`generate --estimate` (issue 35) against the real run it forecasts: a 10% sample of 100 COCO captions, run through
the real pipeline into a throwaway folder, predicts the whole run's kept rows within 15% and its engine time within
25%, and writes nothing to --out."""

from __future__ import annotations

import json

import pytest

from tests.conftest import coco_captions, write_jsonl

pytestmark = pytest.mark.integration

# three negative types and the paraphrase: 4 units a caption; one sample a unit and short answers keep it quick;
# parts of 16 units in both runs, so the sample's engine calls are the size of the whole run's
CONFIG = (
    "negatives: {types: [swap_obj, replace_obj, add_att]}\n"
    "sampling: {n: 1, max_tokens: 32}\n"
    "output: {units_per_part: 16}\n"
    "engine: {price: {per_hour: 2.0}}\n"
)


def test_a_ten_percent_sample_forecasts_the_whole_runs_kept_rows_and_engine_time(
    tmp_path, ray_session, prefect_session, capsys
):
    import ray

    from flows.generate import generate_flow
    from pipeline.cli import main
    from pipeline.config import load_config

    inp = write_jsonl(tmp_path / "in.jsonl", coco_captions(100, offset=40))
    conf = tmp_path / "run.yaml"
    conf.write_text(CONFIG)
    out = tmp_path / "never"
    flags = ["--input", str(inp), "--out", str(out), "--config", str(conf), "--json"]
    ray_flag = ["--ray-address", ray.get_runtime_context().gcs_address]
    assert main(["generate", "negatives", *flags, *ray_flag, "--estimate", "--estimate-fraction", "0.1"]) == 0
    forecast = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["estimate"]
    assert not out.exists()  # nothing published for an estimate
    assert (forecast["sample"]["rows"], forecast["sample"]["inputs"], forecast["sample"]["units"]) == (10, 100, 40)
    assert "a sample's yield is an estimate" in forecast["warning"]

    cfg = load_config(conf, {"input": {"path": inp}, "output": {"dir": tmp_path / "full"}})
    full = generate_flow("negatives", cfg.model_dump(mode="json"))["cost"]["total"]
    got = forecast["projected"]
    print(f"forecast {got}\nfull {full}")
    assert got["units"] == full["units"] == 400
    assert got["kept"] == pytest.approx(full["kept"], rel=0.15), (got, full)
    assert got["engine_s"] == pytest.approx(full["engine_s"], rel=0.25), (got, full)
    assert got["money"] == pytest.approx(got["engine_s"] / 3600 * 2.0, rel=1e-3)
    assert {t["type"] for t in forecast["by_type"]} == {"swap_obj", "replace_obj", "add_att"}
