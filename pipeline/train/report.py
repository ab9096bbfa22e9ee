"""Printing what training and evaluation found: rich tables, or one JSON-ready dict."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from pipeline.train.evaluate import EvalReport

if TYPE_CHECKING:
    from pipeline.train.summary import TrainSummary
    from pipeline.train.trainer import TrainResult

TRAIN_AGAIN = "run the same command again to train from the start"  # training has no resume: a stop keeps a model


def stopped_line(signal_name: str, res: TrainResult | None, out: object) -> str:
    """The one line a stopped ``contrastgen train`` ends with (after ``contrastgen: ``): how far it got, what it kept
    where, and how to go on. ``res`` None (or no step done): stopped before training began, nothing saved.

    >>> from pipeline.train.trainer import TrainResult
    >>> print(stopped_line("SIGINT", TrainResult(planned_steps=40, steps=12, best_step=10), "m").replace("; ", ";\\n"))
    train stopped by SIGINT at step 12 of 40;
    kept the checkpoint of step 10 in m;
    run the same command again to train from the start
    """
    if res is None or not res.steps:
        return f"train stopped by {signal_name} before its first step; no model was saved; {TRAIN_AGAIN}"
    return (
        f"train stopped by {signal_name} at step {res.steps} of {res.planned_steps}; kept the checkpoint of step "
        f"{res.best_step} in {out}; {TRAIN_AGAIN}"
    )


def print_eval(report: EvalReport, title: str, console: Console | None = None) -> None:
    console = console or Console()
    t = Table(title=title)
    for col in ("neg_type", "rows", "accuracy (both)", "caption->", "positive->", "margin"):
        t.add_column(col, justify="right" if col != "neg_type" else "left")
    for s in [*report.per_type, report.overall]:
        t.add_row(
            s.neg_type, str(s.rows), f"{s.acc:.1f}", f"{s.acc_caption:.1f}", f"{s.acc_positive:.1f}", f"{s.margin:+.4f}"
        )
    console.print(t)
    r = report.retention
    console.print(
        f"alignment {report.alignment}  uniformity {report.uniformity}  retention (Spearman x100, {r.source}) "
        f"{r.spearman}  paraphrase similarity {r.paraphrase_sim}  rows without positive {report.no_positive}"
    )
    if report.retrieval is not None:
        x = report.retrieval
        console.print(
            f"retrieval ({x.queries} test queries against {x.passages} test passages, x100): recall@1 "
            f"{x.recall_at_1}  recall@10 {x.recall_at_10}  MRR@10 {x.mrr_at_10}"
        )


def print_train_summary(s: TrainSummary, console: Console | None = None) -> None:
    console = console or Console()
    res = s.result
    console.print(
        f"trained {res.steps} steps ({res.examples} anchors, {res.examples_per_s:.1f}/s); kept step "
        f"{res.best_step}{' (stopped early)' if res.stopped_early else ''}; model in {s.out}"
    )
    for d in s.before:
        b, a = s.before[d], s.after[d]
        t = Table(title=f"Held-out test split of {d}: accuracy (both directions) before -> after")
        for col in ("neg_type", "rows", "before", "after", "change", "margin before", "margin after"):
            t.add_column(col, justify="right" if col != "neg_type" else "left")
        before = {x.neg_type: x for x in [*b.per_type, b.overall]}
        for x in [*a.per_type, a.overall]:
            y = before[x.neg_type]
            t.add_row(
                x.neg_type,
                str(x.rows),
                f"{y.acc:.1f}",
                f"{x.acc:.1f}",
                f"{x.acc - y.acc:+.1f}",
                f"{y.margin:+.4f}",
                f"{x.margin:+.4f}",
            )
        console.print(t)
        console.print(
            f"retention (Spearman x100 on {b.retention.source} pairs) "
            f"{b.retention.spearman} -> {a.retention.spearman}; "
            f"paraphrase similarity {b.retention.paraphrase_sim} -> {a.retention.paraphrase_sim}; "
            f"alignment {b.alignment} -> {a.alignment}; uniformity {b.uniformity} -> {a.uniformity}"
        )
        if b.retrieval is not None and a.retrieval is not None:
            console.print(
                f"retrieval ({a.retrieval.queries} test queries against {a.retrieval.passages} test passages, x100): "
                f"recall@1 {b.retrieval.recall_at_1} -> {a.retrieval.recall_at_1}; recall@10 "
                f"{b.retrieval.recall_at_10} -> {a.retrieval.recall_at_10}; MRR@10 {b.retrieval.mrr_at_10} -> "
                f"{a.retrieval.mrr_at_10}"
            )


def train_summary_dict(s: TrainSummary) -> dict[str, Any]:
    return {
        "out": s.out,
        "train_anchors": len(s.data.train),
        "val_anchors": len(s.data.val),
        "no_positive": s.data.no_positive,
        "train": asdict(s.result),
        "examples_per_s": s.result.examples_per_s,
        "before": {d: r.to_dict() for d, r in s.before.items()},
        "after": {d: r.to_dict() for d, r in s.after.items()},
    }
