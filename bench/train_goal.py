"""The training goal, checked: train with the defaults on a dataset and compare with the base encoder.

    python bench/train_goal.py --data demo_out [--out /tmp/goal_model]

Goal (issue 3): held-out accuracy (both directions) rises on every negative type with at least 50
test rows; swap_obj and swap_att rise by at least 20 points; retention (Spearman x 100 on the
bundled pairs held out from model selection) drops by at most 1 point. Prints each check and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.train.config import load_train_config  # noqa: E402
from pipeline.train.run import run_train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=REPO / "demo_out")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--min-rows", type=int, default=50)
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp()) / "model"
    s = run_train(load_train_config(None, {"data": {"dirs": [a.data]}, "model": {"out": out}}))
    before, after = s.before[str(a.data)], s.after[str(a.data)]
    b = {t.neg_type: t for t in before.per_type}
    checks = []
    for t in after.per_type:
        delta = t.acc - b[t.neg_type].acc
        if t.rows >= a.min_rows:
            checks.append((f"{t.neg_type} ({t.rows} rows) rises", delta > 0, f"{b[t.neg_type].acc:.1f} -> {t.acc:.1f}"))
        if t.neg_type in ("swap_obj", "swap_att"):
            checks.append(
                (f"{t.neg_type} +20 points", delta >= 20, f"{b[t.neg_type].acc:.1f} -> {t.acc:.1f} ({delta:+.1f})")
            )
        print(f"{t.neg_type:16} rows {t.rows:4}  {b[t.neg_type].acc:5.1f} -> {t.acc:5.1f} ({delta:+.1f})")
    drop = before.retention.spearman - after.retention.spearman
    checks.append(
        ("retention drop <= 1 point", drop <= 1.0, f"{before.retention.spearman} -> {after.retention.spearman}")
    )
    print(f"{'all':16} rows {after.overall.rows:4}  {before.overall.acc:5.1f} -> {after.overall.acc:5.1f}")
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    print(
        json.dumps(
            {
                "passed": all(ok for _, ok, _ in checks),
                "checks": [[n, ok, d] for n, ok, d in checks],
                "steps": s.result.steps,
                "best_step": s.result.best_step,
                "train_seconds": s.result.seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
