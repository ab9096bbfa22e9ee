"""How `contrastgen view` scales: time to open a dataset and to serve a page, and peak memory, at 10k / 100k / 1M
rows (issue 19: "a dataset of millions of rows opens at once").

    python bench/view.py --data DIR [--rows 10000 100000 1000000] [--json]

For each size a dataset is made from DIR's train shards' rows repeated (each copy with its own id and a suffixed
anchor, so search and type filters see as many distinct rows), in 100k-row shards with a manifest, then a fresh
process opens it with :class:`pipeline.view.data.Dataset` and times: open, the first page, the type menu,
a page of one type, a text search, and the last page. Peak RSS is that process's high-water mark. The ratios
printed compare each size with the one 10x smaller in the same run: an unfiltered first page should not grow
with the dataset; a filter or a search scans one column of every shard (memory-mapped), so it grows linearly.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARD_ROWS = 100_000


def make(src: Path, rows: int, out: Path) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipeline.kinds import kind_of_format
    from pipeline.shards.writer import read_shard, sha256_file

    manifest = json.loads((src / "manifest.json").read_text())
    base = pa.concat_tables(read_shard(src, s) for s in manifest["shards"] if s["split"] == "train")
    anchor = kind_of_format(manifest["format"], src / "manifest.json").anchor  # the kind's own anchor column
    (out / "data").mkdir(parents=True)
    shards, made, copy = [], 0, 0
    while made < rows:
        n = min(SHARD_ROWS, rows - made)
        parts = []
        while sum(p.num_rows for p in parts) < n:
            t = base.slice(0, min(base.num_rows, n - sum(p.num_rows for p in parts)))
            tag = pa.scalar(f" #{copy}")
            t = t.set_column(t.column_names.index("id"), "id", pc.binary_join_element_wise(t["id"], tag, ""))
            t = t.set_column(t.column_names.index(anchor), anchor, pc.binary_join_element_wise(t[anchor], tag, ""))
            parts.append(t)
            copy += 1
        path = out / "data" / f"train-{len(shards):05d}.arrow"
        table = pa.concat_tables(parts)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        shards.append(
            {
                "path": str(path.relative_to(out)),
                "split": "train",
                "rows": n,
                "sha256": sha256_file(path),
                "num_bytes": path.stat().st_size,
            }
        )
        made += n
    (out / "manifest.json").write_text(json.dumps({**manifest, "shards": shards}))


def measure(root: Path) -> dict:
    from pipeline.view.data import Dataset, Query

    out, t = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        out[name] = round(1000 * (now - t), 1)
        t = now

    ds = Dataset(root)
    lap("open_ms")
    first = ds.page(Query(split="train"))
    lap("first_page_ms")
    types = ds.values("train", "type")
    lap("type_menu_ms")
    ds.page(Query(split="train", type=types[0]))
    lap("type_page_ms")
    ds.page(Query(split="train", q="dog"))
    lap("search_ms")
    ds.page(Query(split="train", page=first.pages - 1))
    lap("last_page_ms")
    out["rows"] = first.total
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=REPO / "demo_out")
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child process
    a = ap.parse_args()
    if a.measure:
        print(json.dumps(measure(a.measure)))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in a.rows:
            root = Path(tmp) / str(n)
            make(a.data, n, root)
            child = subprocess.run(
                [sys.executable, __file__, "--measure", str(root)], capture_output=True, text=True, check=True
            )
            results[n] = json.loads(child.stdout.strip().splitlines()[-1])
            print(n, results[n], flush=True)
    sizes = sorted(results)
    for small, big in zip(sizes, sizes[1:]):
        r = {
            k: round(results[big][k] / max(results[small][k], 0.1), 2)
            for k in results[big]
            if k.endswith(("_ms", "_mib"))
        }
        print(f"{big} vs {small} rows ({big / small:.0f}x): {r}")
    if a.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
