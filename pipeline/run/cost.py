"""What a row costs (issue 35): tokens, engine-seconds and money per accepted row, by stage and by type.

Every unit's raw result records its prompt and output tokens and its engine-seconds on its replica
(:mod:`pipeline.engines.metered`); finalize adds them up block by block (:class:`Cost`, merged like the card's
tally) with the valid and kept rows of each type, and :func:`cost_report` turns the sums into the summary's,
manifest's and card's cost section. Units reused from earlier runs count what they cost when they were made (their
raw parts say), so a resumed or appended dataset reports its whole cost; what this run made is reported apart.

Types are what ``kind.type_of(row)`` says. A task named like a type is that type's own cost (a negative type's
units); every other task (a paraphrase positive, a judge, a seed, sampled rationales) is shared by all kept rows,
each type taking the share of its kept rows. A type's cost per kept row is its own cost plus its share, over its
kept rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.engines.config import Price
from pipeline.records import RawResult, Rejection

UNMETERED = (
    "{n} units come from raw parts written before contrastgen recorded engine time (issue 35): their engine-seconds "
    "count as 0, so the engine time and any per-hour money here are low by their share"
)
NO_PRICE = (
    "no engine.price set: tokens and engine-seconds only. Fix: set engine.price ({per_mtok_in, per_mtok_out} "
    "or {per_hour}) for money"
)


@dataclass
class Spent:
    """What some units cost: how many, their prompt and output tokens, their engine-seconds; ``unmetered``: units
    whose raw part has no engine-seconds (an earlier version's), ``failed``: units the engine gave up on (no tokens
    recorded, their time is lost with their call)."""

    units: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    engine_s: float = 0.0
    setup_s: float = 0.0  # of engine_s, one-time work (a prefix's KV): it does not grow with the input
    unmetered: int = 0
    failed: int = 0

    def add(self, r: RawResult) -> None:
        self.units += 1
        self.tokens_in += r.provenance.tokens_in
        self.tokens_out += r.provenance.tokens_out
        if r.engine_s is None:
            self.unmetered += 1
        else:
            self.engine_s += r.engine_s
            self.setup_s += r.setup_s or 0.0

    def merge(self, other: Spent) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def minus(self, other: Spent) -> Spent:
        return Spent(**{k: v - getattr(other, k) for k, v in asdict(self).items()})

    def scaled(self, share: float) -> Spent:
        return Spent(**{k: v * share for k, v in asdict(self).items()})

    def row(self, price: Price | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "units": self.units,
            "tokens_in": round(self.tokens_in),
            "tokens_out": round(self.tokens_out),
            "engine_s": round(self.engine_s, 3),
            "setup_s": round(self.setup_s, 3),
        }
        if self.unmetered:
            out["unmetered"] = self.unmetered
        if self.failed:
            out["failed"] = self.failed
        if price is not None:
            out["money"] = price.money(self.tokens_in, self.tokens_out, self.engine_s)
        return out


def _total(spents: Iterable[Spent]) -> Spent:
    out = Spent()
    for s in spents:
        out.merge(s)
    return out


@dataclass
class Cost:
    """A dataset's cost, added block by block: spent by stage and by task, valid and kept rows by type, units by
    accelerator (``unknown``: an earlier version's part)."""

    by_stage: dict[str, Spent] = field(default_factory=dict)
    by_task: dict[str, Spent] = field(default_factory=dict)
    valid: Counter = field(default_factory=Counter)
    kept: Counter = field(default_factory=Counter)
    accelerators: Counter = field(default_factory=Counter)

    @classmethod
    def of_units(cls, stage_of: dict[str, str], raws: list[RawResult], failed: list[Rejection]) -> Cost:
        """One block's units: ``stage_of`` maps each unit key to its stage."""
        c = cls()
        for r in raws:
            for book in (c.by_stage.setdefault(stage_of[r.unit_key], Spent()), c.by_task.setdefault(r.task, Spent())):
                book.add(r)
            c.accelerators[r.accelerator or "unknown"] += 1
        for f in failed:
            for book in (
                c.by_stage.setdefault(stage_of.get(f.unit_key or "", "?"), Spent()),
                c.by_task.setdefault(f.task or "?", Spent()),
            ):
                book.units += 1
                book.failed += 1
        return c

    def merge(self, other: Cost) -> None:
        for mine, theirs in ((self.by_stage, other.by_stage), (self.by_task, other.by_task)):
            for k, s in theirs.items():
                mine.setdefault(k, Spent()).merge(s)
        for a, b in ((self.valid, other.valid), (self.kept, other.kept), (self.accelerators, other.accelerators)):
            a.update(b)


def per_type(cost: Cost, price: Price | None) -> list[dict[str, Any]]:
    """One row a type (kept or valid): its own task's units, valid and kept rows, yield (kept over its own units;
    None for a type no task is named after), and its own cost plus its share of the shared tasks, in all and per
    kept row (money per 1,000 kept rows where a price is set)."""
    types = sorted(set(cost.kept) | set(cost.valid))
    own = {t: cost.by_task.get(t, Spent()) for t in types}
    shared = _total(cost.by_task.values()).minus(_total(own.values()))
    kept_all = sum(cost.kept[t] for t in types)
    rows = []
    for t in types:
        kept = cost.kept[t]
        spent = Spent()
        spent.merge(own[t])
        spent.merge(shared.scaled(kept / kept_all if kept_all else 0.0))
        money = None if price is None else price.money(spent.tokens_in, spent.tokens_out, spent.engine_s)
        rows.append(
            {
                "type": t,
                "units": own[t].units,
                "valid": cost.valid[t],
                "kept": kept,
                "yield": round(kept / own[t].units, 4) if own[t].units else None,
                "tokens_in": round(spent.tokens_in),
                "tokens_out": round(spent.tokens_out),
                "engine_s": round(spent.engine_s, 3),
                "setup_s": round(spent.setup_s, 3),
                "money": money,
                "tokens_per_kept": round((spent.tokens_in + spent.tokens_out) / kept, 1) if kept else None,
                "tokens_out_per_kept": round(spent.tokens_out / kept, 1) if kept else None,
                "engine_s_per_kept": round(spent.engine_s / kept, 4) if kept else None,
                "money_per_1k_kept": round(money / kept * 1000, 6) if kept and money is not None else None,
            }
        )
    return rows


def cost_report(cost: Cost, this_run: Spent, price: Price | None) -> dict[str, Any]:
    """The cost section of the summary, the manifest and the card: the dataset's total (every unit it is built
    from, reused ones at what they cost when made), this run's own share, by stage, by task and by type, and notes
    (no price; units without engine time)."""
    total = _total(cost.by_stage.values())
    kept = sum(cost.kept.values())
    notes = [] if price is not None else [NO_PRICE]
    if total.unmetered:
        notes.append(UNMETERED.format(n=total.unmetered))
    whole = total.row(price)
    whole.update(
        valid=sum(cost.valid.values()),
        kept=kept,
        tokens_per_kept=round((total.tokens_in + total.tokens_out) / kept, 1) if kept else None,
        tokens_out_per_kept=round(total.tokens_out / kept, 1) if kept else None,
        engine_s_per_kept=round(total.engine_s / kept, 4) if kept else None,
        money_per_1k_kept=round(whole["money"] / kept * 1000, 6) if kept and price is not None else None,
    )
    return {
        "price": None if price is None else price.model_dump(exclude_none=True),
        "accelerators": dict(sorted(cost.accelerators.items())),
        "total": whole,
        "this_run": this_run.row(price),
        "by_stage": {k: s.row(price) for k, s in sorted(cost.by_stage.items())},
        "by_task": {k: s.row(price) for k, s in sorted(cost.by_task.items())},
        "by_type": per_type(cost, price),
        "notes": notes,
    }


def spent_in(tables: Iterable[tuple[str, Any]]) -> Spent:
    """What the units of some raw files cost (``(name, table)``: a ``part-*`` counts its units' tokens and
    engine-seconds, a ``failed-*`` its units as failed): a run's own share, from the files it committed."""
    import pyarrow.compute as pc

    out = Spent()
    for name, t in tables:
        out.units += t.num_rows
        if not name.startswith("part-"):
            out.failed += t.num_rows
            continue
        out.tokens_in += pc.sum(t.column("tokens_in")).as_py() or 0
        out.tokens_out += pc.sum(t.column("tokens_out")).as_py() or 0
        out.engine_s += pc.sum(t.column("engine_s")).as_py() or 0.0
        out.unmetered += t.column("engine_s").null_count
        out.setup_s += pc.sum(t.column("setup_s")).as_py() or 0.0
    return out
