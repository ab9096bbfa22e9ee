"""Session fixture of the retrieval kind: one real generation through Ray and Prefect (kept here, beside its tests),
and what every kind's flow test checks of `contrastgen filter`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SHARED, write_jsonl


def assert_filter_reproduces(run, out: Path, capsys) -> dict:
    """`contrastgen filter DIR --out OUT` with DIR's own filters on a finished session run of any kind: no LLM call,
    every unit reused, DIR untouched, and the same rows: the train and test shards byte-identical to DIR's."""
    from pipeline.cli import main
    from pipeline.shards.writer import sha256_file

    cfg, s = run
    src = cfg.output.dir

    def tree(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}

    before = tree(src)
    assert main(["filter", str(src), "--out", str(out), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert tree(src) == before  # DIR untouched
    assert (got["generated"], got["reused"], got["units"]) == (0, s["units"], s["units"])
    assert (got["kept"], got["splits"], got["rejected"]) == (s["kept"], s["splits"], s["rejected"])
    shards = sorted(str(p.relative_to(src)) for p in (src / "data").glob("*.arrow"))
    assert shards, f"{src}: expected data shards"
    assert [sha256_file(out / p) for p in shards] == [sha256_file(src / p) for p in shards]
    assert (
        json.loads((out / "manifest.json").read_text())["format"]
        == json.loads((src / "manifest.json").read_text())["format"]
    )
    return got


def mnli_passages(n: int) -> list[dict]:
    """The first ``n`` distinct MultiNLI dev premises (../shared/data/mnli) that read as passages: one or two written
    sentences of 18-40 words (the spoken genre's "uh i know" lines are skipped), without ids (the reader hashes
    them)."""
    seen: list[str] = []
    for line in (SHARED / "mnli" / "dev.jsonl").open():
        p = json.loads(line)["premise"].strip()
        if p not in seen and 18 <= len(p.split()) <= 40 and p[0].isupper() and p.endswith("."):
            seen.append(p)
        if len(seen) == n:
            break
    return [{"passage": p} for p in seen]


@pytest.fixture(scope="session")
def retrieval_run(tmp_path_factory, ray_session, prefect_session):
    """8 MNLI premises + 1 bad row; two query types, the false-negative judge on (top 1), short completions, half
    the passages held out (so both splits have a corpus to mine). Returns (RunConfig, summary)."""
    from flows.generate import generate_flow
    from pipeline.config import load_config

    root = tmp_path_factory.mktemp("retrieval")
    inp = write_jsonl(root / "in.jsonl", mnli_passages(8) + [{"passage": 42}])
    cfg = load_config(
        None,
        {
            "input": {"path": inp},
            "output": {"dir": root / "ds", "units_per_part": 8, "test_fraction": 0.5},
            "sampling": {"n": 1, "max_tokens": 24},
            "retrieval": {"types": ["question", "keyword"], "fn_judge": {"enabled": True, "top": 1}},
        },
    )
    return cfg, generate_flow("retrieval", cfg.model_dump(mode="json"))
