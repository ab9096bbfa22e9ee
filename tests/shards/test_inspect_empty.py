"""`contrastgen inspect` verifies every shard the manifest lists, zero-row ones too (issue 33): a damaged empty shard
is one clear error naming the file, what was expected, what was found, and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import flows.generate  # noqa: F401 - Prefect configures its log handlers on import: here, not inside a captured test
from pipeline.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture
def empty_dataset(tmp_path, ray_session, prefect_session, capsys) -> Path:
    """A real finished dataset whose train and test shards hold no row: `contrastgen generate negatives` of an empty
    input (valid but empty: exit 2)."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "ds"
    assert main(["generate", "negatives", "--input", str(empty), "--out", str(out), "--json"]) == 2
    capsys.readouterr()
    return out


def _inspect_error(ds: Path, capsys) -> str:
    """Both forms of inspect fail with the same one line (exit 2)."""
    lines = []
    for argv in (["inspect", str(ds)], ["inspect", str(ds), "--json"]):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert out == "" and "Traceback" not in err, err
        lines.append(err.strip().splitlines()[-1])
    assert lines[0] == lines[1]
    return lines[0]


def test_inspect_checks_zero_row_shards_like_the_others(empty_dataset, capsys):
    ds = empty_dataset
    shard = next(s for s in json.loads((ds / "manifest.json").read_text())["shards"] if s["split"] == "test")
    assert shard["rows"] == 0 and shard["num_bytes"] > 0
    assert main(["inspect", str(ds)]) == 0  # intact
    capsys.readouterr()
    path = ds / shard["path"]
    intact = path.read_bytes()
    fix = (
        f"Fix: restore {shard['path']} from a copy, or delete it and rerun the generate command that made {ds} "
        "(it republishes the dataset from raw/ with no LLM call)"
    )

    path.write_bytes(intact[: len(intact) // 2])  # truncated, as a full disk or a bad copy leaves it
    assert _inspect_error(ds, capsys) == (
        f"contrastgen: error: {path}: expected {shard['num_bytes']} bytes (as listed in {ds}/manifest.json), found "
        f"{len(intact) // 2}: the file is truncated or changed. {fix}"
    )

    changed = bytearray(intact)
    changed[len(changed) // 2] ^= 0xFF  # same size, other content
    path.write_bytes(bytes(changed))
    assert _inspect_error(ds, capsys) == (
        f"contrastgen: error: {path}: expected sha256 {shard['sha256'][:12]}... (as listed in {ds}/manifest.json), "
        f"found other content: the file is corrupt or changed. {fix}"
    )
