"""`contrastgen inspect`: what a dataset's card and manifest say, as rich tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pipeline.shards.card import load_manifest
from pipeline.shards.writer import read_stream


def sample_rows(root: Path, manifest: dict[str, Any], k: int = 5) -> list[dict[str, Any]]:
    for shard in manifest["shards"]:
        if shard["split"] == "train" and shard["rows"]:
            table = read_stream(Path(root) / shard["path"])
            return table.select(["neg_type", "caption", "positive", "negative"]).slice(0, k).to_pylist()
    return []


def inspect_summary(root: Path) -> dict[str, Any]:
    m = load_manifest(root)
    return {"counts": m["counts"], "per_type": m["per_type"], "samples": sample_rows(root, m), "run_id": m.get("run_id")}


def print_report(root: Path, console: Console | None = None) -> None:
    console = console or Console()
    info = inspect_summary(root)
    c = info["counts"]
    funnel = Table(title=f"Funnel: {root}")
    funnel.add_column("stage")
    funnel.add_column("count", justify="right")
    for label, key in (("input rows", "inputs"), ("input rows rejected", "input_rejected"), ("units", "units"),
                       ("generated (last run)", "generated"), ("reused", "reused"), ("positives kept", "positives"),
                       ("negatives kept", "kept"), ("outputs rejected", "rejected")):
        funnel.add_row(label, str(c[key]))
    for split, n in c["splits"].items():
        funnel.add_row(f"rows in {split}", str(n))
    console.print(funnel)
    types = Table(title="Per type")
    for col in ("task", "units", "kept", "yield", "train", "test", "top rejection reasons"):
        types.add_column(col)
    for t in info["per_type"]:
        types.add_row(t["task"], str(t["units"]), str(t["kept"]), f"{100 * t['yield_']:.1f}%", str(t["train"]), str(t["test"]), t["reasons"])
    console.print(types)
    reasons = Table(title="Rejected by reason")
    reasons.add_column("reason")
    reasons.add_column("count", justify="right")
    for reason, n in c["rejected_by_reason"].items():
        reasons.add_row(reason, str(n))
    console.print(reasons)
    samples = Table(title="Sample rows (train)")
    for col in ("neg_type", "caption", "positive", "negative"):
        samples.add_column(col, overflow="fold")
    for r in info["samples"]:
        samples.add_row(r["neg_type"], r["caption"], r["positive"] or "", r["negative"])
    console.print(samples)
