"""End to end: real MultiNLI premises -> Prefect flow -> Ray actor running SmolLM2 -> queries, the judge, mining with
the bundled MiniLM, the false-negative judge -> shards, card, manifest; inspect, resume, train and evaluate."""

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from pipeline.kinds import retrieval as task
from pipeline.run.store import RunStore
from pipeline.shards.publish import split_of
from tests.conftest import assert_rerun_makes_no_llm_call
from tests.kinds.conftest import assert_filter_reproduces, mnli_passages

pytestmark = pytest.mark.integration
GOLDEN = (
    25,
    7,
    0,
)  # kept, rejected, filtered: seed 0, SmolLM2-135M Q4_1, torch CPU (re-pin deliberately, with the reason)
CLI = str(Path(sys.executable).parent / "contrastgen")
REASONS = {
    "refusal",
    "chatter",
    "multi_line",
    "truncated",
    "empty",
    "copy_of_passage",
    "too_long",
    "type_mismatch",
    "no_score",
    "unparsable_score",
    "not_answerable",
    "round_trip",
    "no_negative",
    "positive_aware",
    "absolute_margin",
    "above_max_score",
    "false_negative",
    "fn_no_score",
    "exact_duplicate",
    "near_duplicate",
    "wrong_type",
    "empty_caption",
    "engine_crash",
    "engine_timeout",
}


def _rows(root: Path, kept: int) -> list[dict]:
    return [r for split in datasets.load_dataset(str(root)).values() for r in split] if kept else []


def _rejected(root: Path) -> list[dict]:
    return datasets.load_dataset(str(root), "rejected")["rejected"].to_list()


def test_every_passage_and_type_ends_as_rows_or_a_rejection(retrieval_run):
    cfg, s = retrieval_run
    assert (s["inputs"], s["input_rejected"]) == (9, 1)
    raws = RunStore(cfg.output.dir).read_raw()
    by_task = {t: [r for r in raws if r.task == t] for t in ("question", "keyword", "judge", "fn_judge")}
    assert len(by_task["question"]) == len(by_task["keyword"]) == 8 and s["units"] == len(raws)
    assert {r.source_text for r in by_task["question"]} == {p["passage"] for p in mnli_passages(8)}
    rows, rejected = _rows(cfg.output.dir, s["kept"]), _rejected(cfg.output.dir)
    assert {r["reason"] for r in rejected} <= REASONS, rejected
    for q in by_task["question"] + by_task["keyword"]:
        qid = task.query_id(q.source_id, q.task, cfg.output.test_fraction)
        made = any(r["source_id"] == qid for r in rows)
        rejected_as = [
            r["reason"] for r in rejected if r["source_id"] in (q.source_id, qid) and r["stage"] == "generation"
        ]
        assert made or rejected_as, (qid, q.texts)
    assert len(by_task["judge"]) == len({r.source_id for r in by_task["judge"]})  # one judge unit per valid query
    assert s["kept"] > 0 and s["splits"]["test"] > 0 and s["splits"]["train"] > 0
    assert (s["kept"], s["rejected"], s["filtered"]) == GOLDEN, s


def test_rows_follow_the_mining_rules_and_stay_in_their_split(retrieval_run):
    cfg, s = retrieval_run
    r_cfg, tpls = cfg.retrieval, task.templates_for(cfg)
    rows = _rows(cfg.output.dir, s["kept"])
    assert rows, f"expected the kept rows of the session's retrieval run ({GOLDEN[0]} in GOLDEN)"
    for r in rows:
        assert r["negative_id"] != r["passage_id"] and r["negative"] != r["positive"] and r["query"] != r["positive"]
        assert split_of(r["passage_id"], 0.5) == split_of(r["negative_id"], 0.5) == split_of(r["source_id"], 0.5)
        assert r["neg_sim"] <= r_cfg.mining.max_positive_ratio * r["pos_sim"] + 1e-6 and r["neg_rank"] >= 1
        assert r["judge_score"] >= r_cfg.judge.min_score and (
            r["fn_score"] is None or r["fn_score"] < r_cfg.fn_judge.max_score
        )
        assert r["prompt_sha"] == tpls[r["query_type"]].sha256 and r["mode"] == r["query_type"] and r["weight"] == 1.0
    for r in _rejected(cfg.output.dir):
        if r["filter"] in ("mining", "fn_judge"):
            assert r["stage"] == "filter" and r["task"] == ("mine" if r["filter"] == "mining" else "fn_judge")
            assert r["score"] is not None and r["source_id"].split("/")[0] and "query:" in r["detail"]


def test_card_and_inspect_show_the_funnel(retrieval_run):
    cfg, s = retrieval_run
    res = subprocess.run([CLI, "inspect", str(cfg.output.dir), "--json"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    st = info["retrieval"]
    assert info["format"] == "contrastgen.retrieval/1" and info["counts"]["kept"] == s["kept"] <= st["rows"]
    assert st["passages"] == 8 and st["queries"] >= st["answerable"] >= st["round_trip"] > 0 and st["fn_judged"] > 0
    assert [t["task"] for t in info["per_type"]] == ["question", "keyword"] and all(
        t["units"] == 8 for t in info["per_type"]
    )
    assert sum(t["train"] + t["test"] for t in info["per_type"]) == s["kept"]
    card = (cfg.output.dir / "README.md").read_text()
    for text in ("## Funnel", "answerable queries", "round trip", "filters.retrieval", "| `question` | 8 |"):
        assert text in card
    res = subprocess.run([CLI, "inspect", str(cfg.output.dir)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "round trip" in res.stdout and "Per type" in res.stdout


def test_rerun_is_a_noop_with_zero_llm_calls(retrieval_run, monkeypatch):
    assert_rerun_makes_no_llm_call("retrieval", retrieval_run, monkeypatch)  # mining plans the same fn_judge units


def test_train_and_evaluate_report_retrieval_before_and_after(retrieval_run, tmp_path):
    cfg, _ = retrieval_run
    out = tmp_path / "model"
    res = subprocess.run(
        [
            CLI,
            "train",
            str(cfg.output.dir),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--loss",
            "mnrl",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    before, after = summary["before"][str(cfg.output.dir)], summary["after"][str(cfg.output.dir)]
    for r in (before["retrieval"], after["retrieval"]):
        assert set(r) == {"recall@1", "recall@10", "mrr@10", "queries", "passages"} and r["queries"] > 0
        assert 0 <= r["recall@1"] <= r["recall@10"] <= 100 and r["recall@1"] <= r["mrr@10"] <= r["recall@10"]
    res = subprocess.run(
        [CLI, "evaluate", str(out), str(cfg.output.dir), "--json"], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout)["retrieval"] == after["retrieval"]
    card = (out / "README.md").read_text()  # the model card reports retrieval too
    assert f"| recall@10 | {before['retrieval']['recall@10']} | {after['retrieval']['recall@10']} |" in card


def test_filter_reruns_its_filters_without_llm_calls(tmp_path, retrieval_run, capsys):
    assert_filter_reproduces(retrieval_run, tmp_path / "same", capsys)
