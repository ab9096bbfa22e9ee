"""End to end: real COCO captions -> Prefect flow -> Ray actor running SmolLM2 -> shards, card, manifest."""

import glob
import json
import time

import datasets
import pytest
import yaml

from pipeline.errors import RunLockedError
from pipeline.kinds import negatives as task
from pipeline.records import REASONS, Reason
from pipeline.run.store import RunStore
from pipeline.shards.writer import sha256_file
from pipeline.text.structure import check_shapes
from tests.conftest import assert_rerun_makes_no_llm_call

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(negatives_run):
    return negatives_run


def test_funnel_accounts_for_every_unit(run):
    cfg, s = run
    assert (s["inputs"], s["input_rejected"], s["units"]) == (11, 1, 90)
    assert (s["generated"], s["reused"]) == (90, 0)
    assert s["kept"] + s["rejected"] + s["filtered"] + s["positives"] == s["units"]
    # Golden counts for seed 0, SmolLM2-135M Q4_1, torch 2.13 CPU: a change means generation, parsing or
    # validation behaviour changed. Re-pin deliberately, with the reason in the commit message.
    # Default filters drop 3 valid negatives (the reasons: the card); blind balancing is measured, not applied,
    # by default. Re-pinned for the int8 engine (issue 17), then for the word-class check (issue 18: 8 of the 31
    # structurally valid negatives edit the wrong kind of word, e.g. a swap_att that swaps nouns).
    assert (s["kept"], s["rejected"], s["positives"], s["filtered"]) == (20, 58, 9, 3), s
    assert s["splits"] == {"train": 17, "test": 3}


def test_loads_with_datasets_both_ways_and_rows_are_valid(run):
    cfg, s = run
    root = str(cfg.output.dir)
    ds = datasets.load_dataset(root)
    assert ds["train"].num_rows + ds["test"].num_rows == s["kept"] == sum(s["splits"].values())
    assert ds["train"].column_names[:3] == ["caption", "positive", "negative"]
    files = sorted(glob.glob(f"{root}/data/train-*.arrow"))
    plain = datasets.load_dataset("arrow", data_files={"train": files})["train"]
    assert plain.num_rows == ds["train"].num_rows
    tpls = task.templates_for(cfg)
    rows = list(ds["train"]) + list(ds["test"])
    assert rows, "expected the kept rows of the session's negatives run (20 in its golden counts)"
    for r in rows:
        assert r["prompt_sha"] == tpls[r["neg_type"]].sha256
        assert r["engine"] == "embedded" and r["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
        assert (
            r["tokens_out"] > 0
            and r["tokens_in"] > 0
            and r["seed"] is not None
            and r["temperature"] == pytest.approx(0.7)
        )
        assert 0.0 < r["surface_sim"] < 1.0 and -1.0 <= r["semantic_sim"] < 1.0
        assert r["weight"] > 0 and 0.0 < r["propensity"] < 1.0
        assert check_shapes(task.SHAPES[r["neg_type"]], [r["caption"]], [r["negative"]]) == [True]
    ids = {r["source_id"]: split for split in ("train", "test") for r in ds[split]}
    assert ds["train"].num_rows and ds["test"].num_rows, "expected rows in both splits (17 and 3 in the golden counts)"
    for split in ("train", "test"):
        assert all(ids[r["source_id"]] == split for r in ds[split])  # one caption, one split
    assert len({r["id"] for r in rows}) == len(rows)


def test_rejected_config_card_and_manifest_agree(run):
    cfg, s = run
    root = cfg.output.dir
    rej = datasets.load_dataset(str(root), "rejected")["rejected"]
    assert rej.num_rows == s["rejected"] + s["input_rejected"] + s["filtered"]
    assert {"stage", "reason", "raw"} <= set(rej.column_names)
    assert all(r["reason"] for r in rej) and any(r["reason"] == "empty_caption" and r["line"] == 11 for r in rej)
    front = yaml.safe_load((root / "README.md").read_text().split("---\n")[1])
    assert front["license"] == "cc-by-4.0" and "sentence-similarity" in front["task_categories"]
    splits = {x["name"]: x["num_examples"] for x in front["dataset_info"][0]["splits"]}
    assert splits == s["splits"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["shards"] and manifest["raw_parts"], "expected the run's data shards and its raw parts listed"
    for shard in manifest["shards"] + manifest["raw_parts"]:
        assert sha256_file(root / shard["path"]) == shard["sha256"]
    assert manifest["config"]["sampling"]["seed"] == 0 and manifest["versions"]["torch"]
    assert set(manifest["prompts"]) == set(task.task_names(cfg))
    body = (root / "README.md").read_text()
    assert "## Per type" in body and "swap_obj" in body
    meaning = REASONS[Reason.empty_caption]  # the card names each reason's meaning from the one registry
    assert f"| `empty_caption` | {s['rejected_by_reason']['empty_caption']} | {meaning} |" in body
    filtered = [r for r in rej if r["stage"] == "filter"]
    assert filtered, "expected rows dropped by the default filters (3 in the golden counts)"
    assert len(filtered) == s["filtered"] and all(r["filter"] and r["score"] is not None and r["raw"] for r in filtered)
    funnel = manifest["filters"]["funnel"]
    negative_steps = [f for f in funnel if f["filter"] != "positives"]
    assert negative_steps[-1]["rows_out"] == s["kept"]
    assert sum(f["rows_in"] - f["rows_out"] for f in funnel) == s["filtered"]
    for plot in manifest["filters"]["plots"]:
        assert (root / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({plot})" in body
    assert {"plots/surface_sim.png", "plots/semantic_sim.png"} <= set(manifest["filters"]["plots"])
    assert "## Filters" in body and "AUC before weighting" in body and "`lm_loglik`" in body


def test_rerun_is_a_noop_with_zero_llm_calls(run, monkeypatch):
    again = assert_rerun_makes_no_llm_call("negatives", run, monkeypatch)
    assert again["reused"] == 90


def test_second_concurrent_run_fails_at_once(run):
    from flows.generate import generate_flow

    cfg, _ = run
    with RunStore(cfg.output.dir):
        t0 = time.perf_counter()
        with pytest.raises(RunLockedError, match="another contrastgen run"):
            generate_flow("negatives", cfg.model_dump(mode="json"))
        assert time.perf_counter() - t0 < 30


def test_inspect_json_reports_what_the_card_says(run):
    import subprocess
    import sys
    from pathlib import Path

    cfg, s = run
    cli = str(Path(sys.executable).parent / "contrastgen")
    res = subprocess.run([cli, "inspect", str(cfg.output.dir), "--json"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["counts"]["kept"] == s["kept"] and info["counts"]["rejected_by_reason"] == s["rejected_by_reason"]
    per_type = {t["task"]: t for t in info["per_type"]}
    assert set(per_type) == set(task.task_names(cfg))
    assert sum(t["kept"] for name, t in per_type.items() if name != "paraphrase") == s["kept"]
    assert info["samples"] and {"caption", "positive", "negative", "neg_type"} <= set(info["samples"][0])
    assert info["filters"]["funnel"] and set(info["scores"]) == {"surface_sim", "semantic_sim", "propensity", "weight"}


def _tree(root):
    return {
        str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"
    }


def test_filter_reruns_filters_on_raw_generations_without_llm(run, tmp_path, capsys):
    from pipeline.cli import main

    cfg, s = run
    src = cfg.output.dir
    before = _tree(src)
    loose = tmp_path / "loose.yaml"
    loose.write_text(
        "filters:\n  negatives:\n    blind: {enabled: false}\n    dedup: {enabled: false}\n"
        "    semantic: {enabled: false}\n    surface: {negative: {low: 0.0}, positive: {high: 1.0}}\n"
    )
    assert main(["filter", str(src), "--out", str(tmp_path / "loose"), "--config", str(loose), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert _tree(src) == before  # DIR untouched
    assert (out["generated"], out["reused"], out["units"], out["inputs"]) == (0, s["units"], s["units"], s["inputs"])
    assert (
        out["kept"] > s["kept"] and out["kept"] + out["rejected"] + out["filtered"] + out["positives"] == out["units"]
    )
    assert out["rejected"] == s["rejected"] and out["input_rejected"] == s["input_rejected"]
    manifest = json.loads((tmp_path / "loose" / "manifest.json").read_text())
    assert manifest["config"]["filters"]["negatives"]["blind"]["enabled"] is False
    assert manifest["config"]["sampling"] == json.loads((src / "manifest.json").read_text())["config"]["sampling"]
    assert [p["sha256"] for p in manifest["raw_parts"]] == [
        p["sha256"] for p in json.loads((src / "manifest.json").read_text())["raw_parts"]
    ]
    assert [f["filter"] for f in manifest["filters"]["funnel"]] == ["positives", "surface"]
    assert (out["kept"], out["filtered"], out["positives"]) == (23, 0, 9)  # nothing dropped: every valid row back
    assert manifest["filters"]["report"]["propensity"]["negative_pairs"] == 23
    # the same filters as the source reproduce the source's rows exactly
    assert main(["filter", str(src), "--out", str(tmp_path / "same"), "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert (same["kept"], same["filtered"], same["splits"]) == (s["kept"], s["filtered"], s["splits"])
    train = sorted((tmp_path / "same" / "data").glob("train-*.arrow"))
    assert [sha256_file(p) for p in train] == [sha256_file(p) for p in sorted((src / "data").glob("train-*.arrow"))]


def test_filter_with_blind_balancing_on_the_test_split(run, tmp_path, capsys):
    """The default blind setting (balance the test split) on real generated rows: train rows are kept as
    they were, test rows are dropped only as `blind_balance`, and the card reports the rates."""
    import datasets

    from pipeline.cli import main

    cfg, s = run
    conf = tmp_path / "blind.yaml"
    conf.write_text("filters:\n  negatives:\n    blind: {splits: [test]}\n")
    assert main(["filter", str(cfg.output.dir), "--out", str(tmp_path / "b"), "--config", str(conf), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["splits"]["train"] == s["splits"]["train"] and out["splits"]["test"] <= s["splits"]["test"]
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    report = manifest["filters"]["report"]
    test_rates = report["blind_by_split"]["test"]["lm_loglik"]
    assert test_rates["rows_before"] == s["splits"]["test"] and test_rates["rows_after"] == out["splits"]["test"]
    if test_rates["rows_after"]:
        assert 0.46 <= test_rates["after"] <= 0.54
    train_rates = report["blind_by_split"]["train"]["lm_loglik"]
    assert train_rates["before"] == train_rates["after"]  # measured, not balanced
    rej = datasets.load_dataset(str(tmp_path / "b"), "rejected")["rejected"]
    blind = [r for r in rej if r["filter"] == "blind"]
    assert len(blind) == s["splits"]["test"] - out["splits"]["test"] and all(
        r["reason"] == "blind_balance" for r in blind
    )
    assert all("lm_loglik gap" in r["detail"] for r in blind)
    body = (tmp_path / "b" / "README.md").read_text()
    assert "| test | yes | `lm_loglik` |" in body and "| train | no | `lm_loglik` |" in body


def test_filter_refuses_generation_settings_and_its_own_dir(run, tmp_path, capsys):
    from pipeline.cli import main

    cfg, _ = run
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling: {temperature: 1.0}\nfilters: {negatives: {blind: {bins: 2}}}\n")
    assert main(["filter", str(cfg.output.dir), "--out", str(tmp_path / "x"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "expected only the sections ['filters', 'output']" in err and "['sampling']" in err and str(bad) in err
    assert main(["filter", str(cfg.output.dir), "--out", str(cfg.output.dir)]) == 2
    assert "expected a new folder, got DIR itself" in capsys.readouterr().err


def test_blocks_of_sources_make_the_same_dataset(run, tmp_path, monkeypatch):
    """The same raw parts finalized in one block (block_sources 1000) and in blocks of 3 captions (4 blocks),
    each published whole (the block size is in the settings hash): no LLM call, every unit reused, and the same
    rows kept and rejected for the same reasons (dedup and the semantic rules decide per block or globally
    alike; blind balancing is measured, not applied, by default), the same funnel and per-type table."""
    import shutil

    import flows.generate

    cfg, s = run

    def no_engine(*a, **k):
        raise AssertionError("a finished run must not start an engine")

    monkeypatch.setattr(flows.generate, "EnginePool", no_engine)
    out = {}
    for name, size in (("one", 1000), ("four", 3)):
        shutil.copytree(cfg.output.dir, tmp_path / name)
        blocked = cfg.model_copy(
            update={"output": cfg.output.model_copy(update={"dir": tmp_path / name, "block_sources": size})}
        )
        out[name] = flows.generate.generate_flow("negatives", blocked.model_dump(mode="json"))
        assert (out[name]["generated"], out[name]["reused"], out[name]["units"]) == (0, s["units"], s["units"])
    for key in ("kept", "rejected", "filtered", "positives", "splits", "rejected_by_reason"):
        assert out["one"][key] == out["four"][key] == s[key], key

    def rows(root, split):
        return (
            sorted(datasets.load_dataset(str(root), split=split)["id"])
            if split != "rejected"
            else sorted(
                (r["unit_key"] or "", r["reason"], r["raw"] or "")
                for r in datasets.load_dataset(str(root), "rejected")["rejected"]
            )
        )

    for split in ("train", "test", "rejected"):
        assert rows(tmp_path / "four", split) == rows(tmp_path / "one", split) == rows(cfg.output.dir, split), split
    one, four = (json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("one", "four"))
    assert four["per_type"] == one["per_type"] and four["filters"]["funnel"] == one["filters"]["funnel"]
    assert [r["mode"] for r in four["publish"]["releases"]] == ["whole"]  # another block size decides rows anew
