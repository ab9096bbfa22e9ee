"""`generate --estimate` (issue 35) against the real run it forecasts: a 10% sample of 80 COCO captions, run through
the real pipeline into a throwaway folder, predicts the whole run's kept rows within 15% and its tokens within 5%,
its engine time within 25%, and writes nothing to --out."""

from __future__ import annotations

import json

import pytest

from tests.conftest import coco_captions, write_jsonl

pytestmark = pytest.mark.integration

# three negative types and the paraphrase: 4 units a caption; one sample a unit and short answers keep it quick;
# parts of 8 units: the 10% sample (8 captions) fills one part of each task, as the estimator asks of a sample
CONFIG = (
    "negatives: {types: [swap_obj, replace_obj, add_att]}\n"
    "sampling: {n: 1, max_tokens: 32}\n"
    "output: {units_per_part: 8}\n"
    "engine: {price: {per_hour: 2.0}}\n"
)


def test_a_ten_percent_sample_forecasts_the_whole_runs_kept_rows_and_engine_time(
    tmp_path, ray_session, prefect_session, capsys
):
    import ray

    from flows.generate import generate_flow
    from pipeline.cli import main
    from pipeline.config import load_config

    inp = write_jsonl(tmp_path / "in.jsonl", coco_captions(80, offset=40))
    conf = tmp_path / "run.yaml"
    conf.write_text(CONFIG)
    out = tmp_path / "never"
    flags = ["--input", str(inp), "--out", str(out), "--config", str(conf), "--json"]
    # The full run first: on 2 cores a cold sample's few parts share the CPU with the part workers' start-up (the
    # spaCy parser of the word-class check loading), which the full run's 40 parts amortize.
    cfg = load_config(conf, {"input": {"path": inp}, "output": {"dir": tmp_path / "full"}})
    full = generate_flow("negatives", cfg.model_dump(mode="json"))["cost"]["total"]
    ray_flag = ["--ray-address", ray.get_runtime_context().gcs_address]
    assert main(["generate", "negatives", *flags, *ray_flag, "--estimate", "--estimate-fraction", "0.1"]) == 0
    forecast = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["estimate"]
    assert not out.exists()  # nothing published for an estimate
    assert (forecast["sample"]["rows"], forecast["sample"]["inputs"], forecast["sample"]["units"]) == (8, 80, 32)
    assert "a sample's yield is an estimate" in forecast["warning"]
    got = forecast["projected"]
    with capsys.disabled():  # -s shows what was forecast beside what the run took
        print(f"\nforecast {got}\nfull {full}")
    assert got["units"] == full["units"] == 320
    assert got["kept"] == pytest.approx(full["kept"], rel=0.15), (got, full)
    assert got["tokens_in"] + got["tokens_out"] == pytest.approx(full["tokens_in"] + full["tokens_out"], rel=0.05)
    # A sample of 4 parts is nearly all first calls, each computing its task's prompt prefix once: the forecast adds
    # that one-time work once (setup_s) and scales the rest (docs/cost.md: 1.33x without it, 0.89x with it).
    assert got["engine_s"] == pytest.approx(full["engine_s"], rel=0.25), (got, full)
    assert got["money"] == pytest.approx(got["engine_s"] / 3600 * 2.0, rel=1e-3)
    assert {t["type"] for t in forecast["by_type"]} == {"swap_obj", "replace_obj", "add_att"}
