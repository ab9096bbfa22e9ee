"""What the dataset viewer reads: the manifest, and pages of rows over the memory-mapped shards.

A page is found without loading the dataset: each shard of the split is opened memory-mapped once (Arrow IPC
stream; the OS pages in only the columns a request touches), the filter (type, a rejected row's stage and reason,
text search) is one vectorised ``pyarrow.compute`` mask per shard, and only the page's rows are turned into Python.
Without a filter, the manifest's row counts place the page: only the shards it covers are opened.
Shard sizes are checked against the manifest; their sha256 is not (hashing gigabytes would make the page slow
to open: ``contrastgen inspect`` and training check it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import DatasetError
from pipeline.kinds import kind_of_format
from pipeline.shards.card import load_manifest
from pipeline.shards.writer import read_stream

SCORES = ("surface_sim", "semantic_sim", "propensity", "weight")
SHOWN = ("id", "model", "seed", *SCORES)  # a row's own columns shown beside its training layout
SEARCHED = ("anchor", "positive", "negative", "raw", "detail")  # in the training layout, and a rejection's text


@dataclass(frozen=True)
class Query:
    """A page request, as the URL holds it (links can be shared)."""

    split: str = "train"
    type: str = ""
    stage: str = ""
    reason: str = ""
    q: str = ""
    page: int = 0
    size: int = 25


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    total: int
    query: Query

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.query.size))


class Dataset:
    """One dataset folder, opened for browsing."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.manifest = load_manifest(self.root)
        self.kind = kind_of_format(self.manifest.get("format"), self.root / "manifest.json")
        self._tables: dict[str, pa.Table] = {}
        self._values: dict[tuple[str, str], list[str]] = {}  # the folder is read-only while it is viewed

    def splits(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.manifest.get("shards", []):
            out[s["split"]] = out.get(s["split"], 0) + int(s.get("rows", 0))
        return out

    def _shard(self, shard: dict) -> pa.Table:
        if shard["path"] not in self._tables:
            path = self.root / shard["path"]
            if not path.is_file() or (shard.get("num_bytes") and path.stat().st_size != shard["num_bytes"]):
                raise DatasetError(
                    f"{path}: expected the shard of {shard.get('num_bytes')} bytes listed in "
                    f"{self.root}/manifest.json, found {'another size' if path.is_file() else 'no file'}. "
                    "Fix: rerun the generate command that made this folder (it republishes from raw/)"
                )
            table = read_stream(path)
            self._tables[shard["path"]] = table if shard["split"] == "rejected" else self._rows(table)
        return self._tables[shard["path"]]

    def _rows(self, table: pa.Table) -> pa.Table:
        """A shard's rows as the rows page shows them: the kind's training layout, then the row's own id,
        provenance and scores (:data:`SHOWN`) where the layout lacks them."""
        rows = self.kind.as_training(table)
        for c in SHOWN:
            if c in table.column_names and c not in rows.column_names:
                rows = rows.append_column(table.schema.field(c), table[c])
        return rows

    def values(self, split: str, column: str) -> list[str]:
        """The distinct values of ``column`` in ``split`` (for the filter menus), sorted."""
        if (split, column) in self._values:
            return self._values[split, column]
        seen: set[str] = set()
        for shard in self._shards(split):
            t = self._shard(shard)
            if column in t.column_names:
                seen.update(v for v in pc.unique(t[column]).to_pylist() if v is not None)
        self._values[split, column] = sorted(seen)
        return self._values[split, column]

    def _shards(self, split: str) -> list[dict]:
        return [s for s in self.manifest.get("shards", []) if s["split"] == split]

    def type_column(self, split: str) -> str:
        return "task" if split == "rejected" else "type"

    def _mask(self, t: pa.Table, query: Query) -> pa.ChunkedArray | None:
        """One vectorised mask for the query's filters, or None for all rows."""
        parts = []
        for column, value in (
            (self.type_column(query.split), query.type),
            ("stage", query.stage),
            ("reason", query.reason),
        ):
            if value and column in t.column_names:
                parts.append(pc.equal(t[column], value))
        if query.q:
            hits = [
                pc.fill_null(pc.match_substring(t[c], query.q, ignore_case=True), False)
                for c in SEARCHED
                if c in t.column_names
            ]
            parts.append(reduce(pc.or_, hits) if hits else pa.chunked_array([pa.array([False] * t.num_rows)]))
        return reduce(pc.and_, parts) if parts else None

    def page(self, query: Query) -> Page:
        """The rows of ``query.page`` and how many rows match, shard by shard."""
        start, total = query.page * query.size, 0
        rows: list[dict] = []
        unfiltered = not (query.type or query.stage or query.reason or query.q)
        for shard in self._shards(query.split):
            lo = max(0, start - total)
            if unfiltered and (lo >= int(shard.get("rows", 0)) or len(rows) >= query.size):
                total += int(shard.get("rows", 0))  # the manifest's count: a shard off the page is never opened
                continue
            t = self._shard(shard)
            mask = self._mask(t, query)
            if mask is not None:
                t = t.filter(mask)
            if lo < t.num_rows and len(rows) < query.size:
                rows += t.slice(lo, query.size - len(rows)).to_pylist()
            total += t.num_rows
        return Page(rows, total, query)
