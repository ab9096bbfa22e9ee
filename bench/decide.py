"""The filter stage's global decisions out of core, at 100k, 1M and 10M rows: peak memory and time.

    python bench/decide.py [--rows 100000 1000000 10000000] [--block 37000] [--json-out FILE]

What finalize's global step costs once the per-row scores exist, at sizes the end-to-end benchmark
(``bench/scale.py``) cannot reach on two cores in a session: synthetic :class:`~pipeline.filters.score.Scored`
blocks of ``--block`` rows (about one block of 4,096 captions of the negatives kind; groups of 9 rows, 80%
with a positive, pair keys drawn so that about 3% of rows are exact duplicates, two blind scorers, every
filter of the default config on) are spilled with :class:`~pipeline.filters.spill.ScoredSpill`, decided by
:func:`~pipeline.filters.stage.decide`, and read back a block at a time as finalize's writing pass does.

Each size runs in a fresh process. Printed per size: seconds to spill, to decide and to read back; the
process's peak RSS (``VmHWM``) after the spill (the baseline: interpreter, numpy, pyarrow, one block) and after
the decisions; and the decisions' own growth over the baseline. The goal is memory that does not grow with the
rows: for every pair of sizes 10x apart, the ratio of that growth, printed with PASS when it is at most 1.5
(the end-to-end goal's bound for 10x more work), and the ratio of time per row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def block(rng, b: int, n: int):
    import numpy as np

    from pipeline.filters.score import Drop, Scored

    groups = max(1, n // 9)
    group = np.sort(rng.integers(0, groups, n))
    has = rng.random(groups) < 0.8
    slot = np.cumsum(has) - 1
    names = [f"b{b}g{i}" for i in np.flatnonzero(has)]
    kept = rng.random(len(names)) < 0.95
    key = rng.integers(0, 2**63, n).astype(np.uint64)
    repeat = rng.random(n) < 0.03
    key[repeat] = np.uint64(12345) + rng.integers(0, 1000, int(repeat.sum())).astype(np.uint64)  # shared across blocks
    types = np.array(
        ["swap_att", "swap_obj", "replace_att", "replace_obj", "replace_rel", "add_att", "add_obj", "reshuffle"],
        dtype=object,
    )
    return Scored(
        np.char.add(f"{b:06d}-".encode(), np.arange(n).astype("S8")),
        types[rng.integers(0, 8, n)],
        np.array(["train", "test"], dtype=object)[(rng.random(n) < 0.05).astype(int)],
        np.zeros(n, bool),
        rng.random(n).astype(np.float32),
        rng.uniform(0.3, 0.9, n).astype(np.float32),
        rng.uniform(0.2, 0.9, n).astype(np.float32),
        np.where(has[group], slot[group], -1),
        key,
        (rng.random(n) * 0.8).astype(np.float32),
        rng.normal(0.3, 1, (n, 2)),
        rng.random((n, 4)).astype(np.float32),
        names,
        rng.random(len(names)).astype(np.float32),
        rng.uniform(0.5, 0.9, len(names)).astype(np.float32),
        kept,
        rng.random((len(names), 4)).astype(np.float32),
        {g: Drop("surface", "positive_out_of_band", 0.1) for g, k in zip(names, kept) if not k},
    )


def one(rows: int, size: int) -> dict:
    """One size, in this process."""
    import numpy as np

    from pipeline.config import load_config
    from pipeline.filters.spill import ScoredSpill
    from pipeline.filters.stage import decide

    cfg = load_config(None, {}).filters.negatives
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-decide-") as folder:
        t0 = time.perf_counter()
        spill = ScoredSpill(Path(folder), 2)
        for b, lo in enumerate(range(0, rows, size)):
            spill.add(block(rng, b, min(size, rows - lo)))
        t1, base = time.perf_counter(), hwm_mb()
        dec = decide(spill, cfg)
        t2 = time.perf_counter()
        kept = sum(int(dec.block(b).keep.sum()) for b in range(spill.blocks))
        t3 = time.perf_counter()
        return {
            "rows": rows,
            "blocks": spill.blocks,
            "kept": kept,
            "spill_s": round(t1 - t0, 1),
            "decide_s": round(t2 - t1, 1),
            "read_s": round(t3 - t2, 1),
            "base_mb": round(base),
            "peak_mb": round(hwm_mb()),
            "growth_mb": round(hwm_mb() - base),
            "funnel": [(f.filter, f.rows_out) for f in dec.funnel],
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--block", type=int, default=37_000)
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.block)))
        return
    results = []
    for rows in a.rows:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(rows), "--block", str(a.block)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(
            f"{r['rows']:>11,} rows {r['blocks']:>4} blocks  spill {r['spill_s']:>7.1f} s  "
            f"decide {r['decide_s']:>7.1f} "
            f"s"
            f"  read {r['read_s']:>6.1f} s  ({r['rows'] / max(r['decide_s'], 1e-9):>9,.0f} rows/s)  "
            f"base {r['base_mb']:>5} MB  peak {r['peak_mb']:>5} MB  growth {r['growth_mb']:>5} MB  kept {r['kept']:,}",
            flush=True,
        )
    for small in results:  # every pair of sizes 10x apart, as bench/scale.py compares them
        for r in (r for r in results if r["rows"] == 10 * small["rows"]):
            ratio = r["growth_mb"] / max(small["growth_mb"], 1)
            per_row = (r["decide_s"] / r["rows"]) / max(small["decide_s"] / small["rows"], 1e-12)
            print(
                f"{r['rows']:,} vs {small['rows']:,} rows: decisions' memory growth x{ratio:.2f} "
                f"({'PASS' if ratio <= 1.5 else 'FAIL'} at most 1.5), peak x{r['peak_mb'] / small['peak_mb']:.2f}, "
                f"time per row x{per_row:.2f}"
            )
    if a.json_out:
        a.json_out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
