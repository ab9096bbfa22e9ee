"""`contrastgen inspect`: what a dataset's card and manifest say, as rich tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.table import Table

from pipeline.kinds import kind_of_format
from pipeline.shards.card import COST_COLUMNS, cost_rows, load_manifest
from pipeline.shards.writer import read_shard


def verified_shards(root: Path, manifest: dict[str, Any]) -> dict[str, pa.Table]:
    """Every shard the manifest lists (path -> table), each checked as :func:`read_shard` checks one: size and sha256 as
    recorded, a readable Arrow stream. Zero-row shards and every split included: a damaged file fails ``inspect`` even
    where no row of it would be shown."""
    return {s["path"]: read_shard(root, s) for s in manifest["shards"]}


def sample_rows(root: Path, manifest: dict[str, Any], tables: dict[str, pa.Table], k: int = 5) -> list[dict[str, Any]]:
    """The first ``k`` train rows: their type, anchor, positive and negative columns (names as in the shards)."""
    kind = kind_of_format(manifest.get("format"), Path(root) / "manifest.json")
    for shard in manifest["shards"]:
        if shard["split"] == "train" and shard["rows"]:
            table = tables[shard["path"]].select([kind.sample_key, kind.anchor, "positive", "negative"])
            return table.slice(0, k).to_pylist()
    return []


def inspect_summary(root: Path) -> dict[str, Any]:
    m = load_manifest(root)
    kind = kind_of_format(m.get("format"), Path(root) / "manifest.json").name
    tables = verified_shards(root, m)
    return {
        "format": m.get("format"),
        "counts": m["counts"],
        "per_type": m.get("per_type", []),
        **({kind: m[kind]} if kind in m else {}),  # the kind's own manifest section (its statistics)
        "samples": sample_rows(root, m, tables),
        "run_id": m.get("run_id"),
        "releases": m.get("publish", {}).get("releases", []),
        "filters": m.get("filters", {}),
        "scores": score_summary(m, tables),
        "blind_splits": m["config"].get("filters", {}).get(kind, {}).get("blind", {}).get("splits", []),
        "cost": m.get("cost", {}),  # none in a dataset made before issue 35
    }


def score_summary(manifest: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, dict[str, float]]:
    """min / mean / max of each filter score column over the kept rows (train and test)."""
    kept = [tables[s["path"]] for s in manifest["shards"] if s["split"] in ("train", "test") and s["rows"]]
    out = {}
    for col in ("surface_sim", "semantic_sim", "propensity", "weight"):
        values = [v for t in kept if col in t.column_names for v in t[col].to_pylist() if v is not None and v == v]
        if values:
            out[col] = {"min": min(values), "mean": sum(values) / len(values), "max": max(values), "rows": len(values)}
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def print_filters(info: dict[str, Any], console: Console) -> None:
    f = info["filters"]
    if not f:
        return
    funnel = Table(title="Filter funnel")
    for col in ("filter", "rows in", "dropped", "rows out", "dropped by reason"):
        funnel.add_column(col)
    for step in f["funnel"]:
        reasons = ", ".join(f"{r} {n}" for r, n in step["dropped"].items())
        funnel.add_row(
            step["filter"],
            str(step["rows_in"]),
            str(step["rows_in"] - step["rows_out"]),
            str(step["rows_out"]),
            reasons,
        )
    console.print(funnel)
    report = f["report"]
    checks = Table(title="Bias checks (goal after: 50% / 0.5)")
    for col in ("check", "before", "after"):
        checks.add_column(col)
    balanced = info["blind_splits"]
    for split, rates in report.get("blind_by_split", {}).items():
        for name, r in rates.items():
            label = f"blind {name} picks the anchor ({split}{', balanced' if split in balanced else ''})"
            checks.add_row(label, _pct(r["before"]), _pct(r["after"]))
    prop = report.get("propensity", {})
    for key, label in (("surface", "AUC surface_sim pos vs neg"), ("semantic", "AUC semantic_sim pos vs neg")):
        if f"auc_{key}_before" in prop:
            checks.add_row(label, f"{prop[f'auc_{key}_before']:.3f}", f"{prop[f'auc_{key}_after']:.3f}")
    console.print(checks)
    scores = Table(title="Score columns (kept rows)")
    for col in ("column", "min", "mean", "max"):
        scores.add_column(col)
    for col, st in info["scores"].items():
        scores.add_row(col, f"{st['min']:.3f}", f"{st['mean']:.3f}", f"{st['max']:.3f}")
    console.print(scores)


def print_cost(cost: dict[str, Any], console: Console) -> None:
    """The cost table by type (tokens, engine-seconds and money per kept row), the dataset's and this run's totals,
    and the notes (no price; units without engine time)."""
    if not cost:
        return
    total, run = cost["total"], cost["this_run"]
    money = f", money {total['money']:.4g}" if "money" in total else ""
    table = Table(
        title=f"Cost: {total['units']} units, {total['tokens_in']} prompt + {total['tokens_out']} output tokens, "
        f"{total['engine_s']:.1f} engine-s{money} (this run: {run['units']} units, {run['engine_s']:.1f} engine-s)"
    )
    for col in COST_COLUMNS:
        table.add_column(col, justify="left" if col == "type" else "right")
    for row in cost_rows(cost):
        table.add_row(*row)
    console.print(table)
    for note in cost.get("notes", []):
        console.print(f"note: {note}")


def print_report(root: Path, console: Console | None = None) -> None:
    console = console or Console()
    info = inspect_summary(root)
    c = info["counts"]
    funnel = Table(title=f"Funnel: {root}")
    funnel.add_column("stage")
    funnel.add_column("count", justify="right")
    kind = kind_of_format(info["format"], Path(root) / "manifest.json")
    stats = info.get(kind.name)  # a kind's own manifest section (rationales, pairs, retrieval), if it has one
    rationales = stats is not None
    for label, key in (
        ("input rows", "inputs"),
        ("input rows rejected", "input_rejected"),
        ("units", "units"),
        ("generated (last run)", "generated"),
        ("reused", "reused"),
        ("distinct positives in rows" if rationales else "positives kept", "positives"),
        ("rows kept" if rationales else "negatives kept", "kept"),
        ("outputs rejected", "rejected"),
        ("dropped by filters", "filtered"),
    ):
        funnel.add_row(label, str(c.get(key, 0)))
    for key, n in (stats or {}).items():
        if not isinstance(n, dict):  # counts and means; per-key breakdowns (by_source, with_rows) are not funnel steps
            funnel.add_row(key.replace("_", " "), str(n))
    for split, n in c["splits"].items():
        funnel.add_row(f"rows in {split}", str(n))
    if info["releases"]:
        last = info["releases"][-1]
        funnel.add_row(
            "releases (published, never rewritten)",
            f"{len(info['releases'])}; last: run {last['run_id']}, {last['mode']}",
        )
    console.print(funnel)
    if info["per_type"]:
        types = Table(title="Per type")
        for col in ("task", "units", "kept", "yield", "train", "test", "top rejection reasons"):
            types.add_column(col)
        for t in info["per_type"]:
            types.add_row(
                t["task"],
                str(t["units"]),
                str(t["kept"]),
                f"{100 * t['yield_']:.1f}%",
                str(t["train"]),
                str(t["test"]),
                t["reasons"],
            )
        console.print(types)
    print_cost(info["cost"], console)
    reasons = Table(title="Rejected by reason")
    reasons.add_column("reason")
    reasons.add_column("count", justify="right")
    for reason, n in c["rejected_by_reason"].items():
        reasons.add_row(reason, str(n))
    console.print(reasons)
    print_filters(info, console)
    samples = Table(title="Sample rows (train)")
    for col in ("type", "anchor", "positive", "negative"):
        samples.add_column(col, overflow="fold")
    for r in info["samples"]:
        samples.add_row(r[kind.sample_key], r[kind.anchor], r["positive"] or "", r["negative"])
    console.print(samples)
