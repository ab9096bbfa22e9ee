"""What the word-class check costs at assembly: the same raw generations assembled with and without it.

    python bench/word_class.py --data DIR [--copies 1 10] [--block 1000] [--json]

DIR is a negatives dataset (its ``raw/`` parts: what the LLM wrote). Its raw results are repeated ``copies``
times (each copy's captions suffixed, so every caption is parsed anew) and assembled a block of ``block``
captions at a time, as finalize does, once with ``negatives.word_class`` off (the baseline, same run) and once
on. Printed: seconds each way, the ratio on/off, captions parsed per second, and peak RSS after each size: the
parses of one block are dropped with it, so memory should not grow with the copies.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import load_config  # noqa: E402
from pipeline.kinds import negatives as task  # noqa: E402
from pipeline.shards.schema import raw_results  # noqa: E402
from pipeline.text.word_class import load_parser  # noqa: E402


def read_raws(root: Path) -> list:
    out = []
    for part in sorted((root / "raw").glob("*.arrow")):
        with pa.memory_map(str(part)) as src:
            out += raw_results(pa.ipc.open_stream(src).read_all())
    return out


def blocks(raws: list, copies: int, block: int):
    """The raws of ``copies`` copies, a block of ``block`` captions at a time (a caption's units stay together)."""
    by_caption: dict[str, list] = {}
    for r in raws:
        by_caption.setdefault(r.source_text, []).append(r)
    groups = list(by_caption.values())
    for c in range(copies):
        for i in range(0, len(groups), block):
            yield [
                dataclasses.replace(r, source_text=f"{r.source_text} ({c})" if c else r.source_text)
                for g in groups[i : i + block]
                for r in g
            ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--block", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    tpls = task.templates_for(load_config(None, {}))
    raws = read_raws(a.data)
    t = time.perf_counter()
    load_parser()
    print(
        f"{len(raws)} raw units, {len({r.source_text for r in raws})} captions; parser loaded in "
        f"{time.perf_counter() - t:.1f} s"
    )
    results = []
    for copies in a.copies:
        row = {"copies": copies, "units": len(raws) * copies}
        for on in (False, True):
            t = time.perf_counter()
            kept = sum(len(task.assemble(b, tpls, word_class=on)[0]) for b in blocks(raws, copies, a.block))
            row["on" if on else "off"] = {"s": round(time.perf_counter() - t, 2), "kept": kept}
        captions = len({r.source_text for r in raws}) * copies
        row["ratio"] = round(row["on"]["s"] / row["off"]["s"], 2)
        row["captions_per_s"] = round(captions / max(row["on"]["s"] - row["off"]["s"], 1e-9))
        row["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        results.append(row)
        print(
            f"x{copies}: assemble {row['off']['s']} s without the check, {row['on']['s']} s with it "
            f"({row['ratio']}x; kept {row['off']['kept']} -> {row['on']['kept']}); {row['captions_per_s']} captions "
            f"parsed/s; peak RSS {row['peak_rss_mib']} MiB"
        )
    if len(results) > 1:
        print(
            f"peak RSS x{results[-1]['copies']} / x{results[0]['copies']}: "
            f"{results[-1]['peak_rss_mib'] / results[0]['peak_rss_mib']:.2f}"
        )
    if a.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
