"""``contrastgen generate KIND ... --estimate``: what the whole input will cost, forecast from a sample run.

:func:`plan` picks the sample: ``estimate.fraction`` of the valid input rows (at least one), fewer where the
sample's first stage would pass ``estimate.max_units`` units, and more where that is too few to fill one part (one
engine call) of each task, spread evenly over the input (``input.sample_rows``),
run through the real pipeline into a throwaway folder (never ``--out``). :func:`project` scales the sample's cost
section (:mod:`pipeline.run.cost`) to the whole input: units, tokens, engine-seconds, money and each type's kept rows
grow with the input rows, at the yields the sample measured, but for the engine's one-time work (``setup_s``: a
prompt prefix's KV, computed on a task's first call on a replica), which a small sample holds as much of as the whole
run, so it is added once. A sample's yield is an estimate: the warning says how big the sample was.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.config import RunConfig
from pipeline.engines.config import Price
from pipeline.kinds.base import Context, Kind
from pipeline.run.common import part_size

PROBE_ROWS = 64  # input rows planned to measure the first stage's units per row


@dataclass(frozen=True)
class Sample:
    """The sample an estimate runs: of ``inputs`` valid input rows, ``rows``; its first stage makes about
    ``units_per_row`` units a row; it is written to ``folder`` (removed after)."""

    inputs: int
    rows: int
    units_per_row: float
    folder: Path


def plan(kind: Kind, ctx: Context) -> tuple[RunConfig, Sample]:
    """The sample's run config (``ctx``: the whole input, read by :func:`pipeline.run.generate.start`) and the
    sample. The config is ``ctx.cfg`` with ``input.sample_rows`` and a fresh throwaway ``output.dir``."""
    cfg = ctx.cfg
    records = ctx.inputs.records
    probe = replace(ctx, inputs=replace(ctx.inputs, records=records[:PROBE_ROWS]), stages={})
    units = kind.units(kind.stages(cfg)[0], probe)
    per_row = len(units) / max(1, len(probe.inputs.records))
    rows = max(1, round(cfg.estimate.fraction * len(records)))
    if per_row:
        # Engine time per unit depends on how full the engine's batches are, and a batch holds one task's units
        # (one cached prompt prefix): a sample too small to fill one part of each task forecasts slow, half-empty
        # calls. So at least a part's units of each task where the input and estimate.max_units allow.
        rows = max(rows, math.ceil(part_size(cfg) * len({u.task for u in units}) / per_row))
        rows = min(rows, max(1, int(cfg.estimate.max_units // per_row)))
    rows = min(rows, max(1, len(records)))
    folder = Path(tempfile.mkdtemp(prefix="contrastgen-estimate-"))
    sample_cfg = cfg.model_copy(
        update={
            "input": cfg.input.model_copy(update={"sample_rows": rows}),
            "output": cfg.output.model_copy(update={"dir": folder / "sample", "overwrite": False}),
        }
    )
    return sample_cfg, Sample(len(records), rows, per_row, folder)


def project(sample: Sample, summary: dict[str, Any], price: Price | None) -> dict[str, Any]:
    """The whole input's forecast from the sample run's ``summary``: totals and per type (kept rows at the sample's
    yield; engine-seconds and money per 1,000 kept rows as the sample measured them), with the sample's size and the
    warning that its yields are an estimate."""
    scale = sample.inputs / sample.rows if sample.rows else 0.0
    cost = summary["cost"]
    total = cost["total"]

    def grown(row: dict[str, Any]) -> float:
        # one-time work (a prompt prefix's KV on a replica: setup_s) does not grow with the input; the rest does
        setup = row.get("setup_s") or 0.0
        return round((row["engine_s"] - setup) * scale + setup, 3)

    tokens_in, tokens_out = round(total["tokens_in"] * scale), round(total["tokens_out"] * scale)
    engine_s = grown(total)
    whole = {
        "units": round(total["units"] * scale),
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "engine_s": engine_s,
        "engine_hours": round(engine_s / 3600, 4),
        "kept": round(total["kept"] * scale),
        "money": None if price is None else round(price.money(tokens_in, tokens_out, engine_s), 6),
    }
    by_type = [
        {
            "type": t["type"],
            "sample_units": t["units"],
            "sample_kept": t["kept"],
            "yield": t["yield"],
            "kept": round(t["kept"] * scale),
            "engine_s": grown(t),
            "tokens_out_per_kept": t["tokens_out_per_kept"],
            "engine_s_per_kept": t["engine_s_per_kept"],
            "money_per_1k_kept": t["money_per_1k_kept"],
        }
        for t in cost["by_type"]
    ]
    return {
        "sample": {**asdict(sample), "folder": None, "units": total["units"], "kept": total["kept"]},
        "projected": whole,
        "by_type": by_type,
        "price": cost["price"],
        "warning": (
            f"an estimate from a sample of {sample.rows} of {sample.inputs} input rows ({total['units']} units, "
            f"{total['kept']} kept rows): a sample's yield is an estimate, and the whole run's may differ, most for "
            "types with few rows in the sample. Nothing was written to --out."
        ),
        "notes": cost["notes"],
    }


def lines(forecast: dict[str, Any]) -> list[str]:
    """The forecast as the lines ``generate --estimate`` prints."""
    p = forecast["projected"]
    money = "n/a (no engine.price)" if p["money"] is None else f"{p['money']:.4g}"
    out = [
        f"estimate for the whole input: {p['units']} units, {p['tokens_in']} prompt + {p['tokens_out']} output "
        f"tokens, {p['engine_s']:.1f} engine-seconds ({p['engine_hours']:.3f} replica-hours), money {money}, "
        f"about {p['kept']} kept rows",
        "type: projected kept rows (sample kept/units, yield), engine-s per kept row, money per 1,000 kept rows",
    ]
    for t in forecast["by_type"]:
        y = "n/a" if t["yield"] is None else f"{100 * t['yield']:.0f}%"
        m = "n/a" if t["money_per_1k_kept"] is None else f"{t['money_per_1k_kept']:.4g}"
        e = "n/a" if t["engine_s_per_kept"] is None else f"{t['engine_s_per_kept']:.3g}"
        out.append(f"  {t['type']}: {t['kept']} ({t['sample_kept']}/{t['sample_units']}, {y}), {e}, {m}")
    return out + [f"warning: {forecast['warning']}"] + [f"note: {n}" for n in forecast["notes"]]
