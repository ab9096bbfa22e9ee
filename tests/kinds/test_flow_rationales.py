"""End to end: bundled easy questions and real SVAMP, GSM8K and CommonsenseQA ones -> Prefect flow -> Ray actor running
SmolLM2 ->
rationale shards, card, manifest; then inspect and the trainer read them."""

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pytest

from pipeline.inputs import read_questions
from pipeline.kinds import rationales as task
from pipeline.run.store import RunStore
from tests.conftest import assert_rerun_makes_no_llm_call
from tests.kinds.conftest import assert_filter_reproduces

pytestmark = pytest.mark.integration
INVALID = {"truncated", "refusal", "too_short", "no_answer"}


def _rejected(root: Path) -> list[dict]:
    return datasets.load_dataset(str(root), "rejected")["rejected"].to_list()


def test_every_sample_is_a_row_side_or_a_rejection_with_a_reason(rationales_run):
    cfg, s = rationales_run
    assert (s["inputs"], s["input_rejected"], s["units"], s["generated"]) == (7, 1, 12, 12)
    st = json.loads((cfg.output.dir / "manifest.json").read_text())["rationales"]
    samples = 6 * (cfg.rationales.k + cfg.rationales.adversarial.n)
    invalid = [r for r in _rejected(cfg.output.dir) if r["reason"] in INVALID]
    assert st["sampled_valid"] + st["adversarial_valid"] + len(invalid) == samples
    # Golden counts for seed 0, SmolLM2-135M Q4_1, torch 2.13 CPU: a change means generation, parsing or
    # labelling changed. Re-pin deliberately, with the reason in the commit message.
    assert (s["kept"], s["rejected"], s["positives"], s["filtered"]) == GOLDEN, s


GOLDEN = (5, 18, 4, 0)  # kept, rejected, distinct positives, filtered (re-pinned for the int8 engine, issue 17)


def test_rows_are_labelled_and_traceable_to_their_raw_samples(rationales_run):
    cfg, s = rationales_run
    ds = datasets.load_dataset(str(cfg.output.dir))
    rows = [r for split in ds.values() for r in split]
    assert ds["train"].column_names[:3] == ["question", "positive", "negative"] and len(rows) == s["kept"]
    raws = {(r.source_id, r.task): r for r in RunStore(cfg.output.dir).read_raw()}
    questions = {q.question for q in read_questions(cfg.input)[0]}
    tpls = task.templates_for(cfg)
    assert rows, f"expected the kept rationale rows of the session's run ({GOLDEN[0]} in GOLDEN)"
    for r in rows:
        assert r["pos_answer"] == r["answer"] != r["neg_answer"] and r["label_source"] == "gold"
        assert r["question"] in questions
        assert r["neg_source"] in ("sampled_wrong", "adversarial")
        raw = raws[(r["source_id"], "adversarial" if r["neg_source"] == "adversarial" else "sampled")]
        i = r["seed"] - raw.provenance.seed  # sample i of a unit uses the unit's seed + i
        assert " ".join(raw.texts[i].split()) == r["negative"] and r["prompt_sha"] in {t.sha256 for t in tpls.values()}
        assert 0 <= r["neg_quality"] < r["pos_quality"] <= 1 and r["weight"] > 0


def test_inspect_and_the_trainer_understand_rationales(rationales_run):
    cfg, s = rationales_run
    cli = str(Path(sys.executable).parent / "contrastgen")
    res = subprocess.run([cli, "inspect", str(cfg.output.dir), "--json"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["format"] == "contrastgen.rationales/1" and info["counts"]["kept"] == s["kept"]
    assert info["rationales"]["questions"] == 6 and info["filters"]["funnel"]
    text = subprocess.run([cli, "inspect", str(cfg.output.dir)], capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "sampled valid" in text.stdout
    card = (cfg.output.dir / "README.md").read_text()
    assert "How good is the generator" in card and "filters.rationales" in card


def test_the_trainer_reads_rationales_with_the_question_as_anchor(rationales_run, tmp_path):
    from pipeline.train.data import groups_from_table, read_split

    cfg, s = rationales_run
    split = "train" if s["splits"]["train"] else "test"
    table = read_split(cfg.output.dir, split)
    groups, _ = groups_from_table(table, 8)
    questions = set(
        pa.ipc.open_stream(pa.memory_map(str(next((cfg.output.dir / "data").glob(f"{split}-*.arrow")))))
        .read_all()["question"]
        .to_pylist()
    )
    assert groups and {g.anchor for g in groups} <= questions
    assert all(g.positive not in g.negatives for g in groups)


def test_rerun_is_a_noop_with_zero_llm_calls(rationales_run, monkeypatch):
    assert_rerun_makes_no_llm_call("rationales", rationales_run, monkeypatch)


def test_filter_reruns_its_filters_without_llm_calls(tmp_path, rationales_run, capsys):
    assert_filter_reproduces(rationales_run, tmp_path / "same", capsys)
