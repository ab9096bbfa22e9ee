"""The filter columns of every block on disk, so the global decisions hold a block, not the dataset.

:class:`ScoredSpill` appends each block's :class:`~pipeline.filters.score.Scored` columns to two Arrow IPC
files (rows, and the positive of each group), one record batch per block, and reads any block back by
itself (the file format's footer gives each batch's offset; nothing is memory-mapped). With a row's 64-bit
rank (the first 8 bytes of the sha256 of its id) stored beside its columns, :class:`Smallest` keeps a
uniform, deterministic sample of bounded size over a pass (the rows of smallest rank), which is how the
global steps fit what needs a fit: the blind bins' quantiles and the propensity model. :class:`Duplicates`
(exact dedup by hash partitions) and :class:`Cells` (blind balancing by buckets of rank) are the two global
steps that decide every row; :mod:`pipeline.filters.stage` runs them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.filters.blind import cell_codes, cell_quotas, gap_edges, key_rank
from pipeline.filters.config import FilterName
from pipeline.filters.score import Drop, Scored, _shared
from pipeline.records import Reason
from pipeline.shards.writer import Spool

if TYPE_CHECKING:
    from pipeline.filters.config import FilterConfig

FEATS = 4  # surface features per pair (pipeline.filters.propensity.FEATURES)
BUCKET_BITS = 10  # blind selection: 2**10 buckets of id hash per cell


def _row_schema(scorers: int) -> pa.Schema:
    return pa.schema(
        [
            ("id", pa.binary()),
            ("rank", pa.uint64()),
            ("stratum", pa.string()),
            ("split", pa.string()),
            ("pinned", pa.bool_()),
            ("surface_sim", pa.float32()),
            ("band", pa.float32()),
            ("semantic_sim", pa.float32()),
            ("pos_of_row", pa.int64()),
            ("dup_key", pa.uint64()),
            ("near", pa.float32()),
            *((f"gap{j}", pa.float64()) for j in range(scorers)),
            *((f"feat{j}", pa.float32()) for j in range(FEATS)),
        ]
    )


GROUP_SCHEMA = pa.schema(
    [
        ("group", pa.string()),
        ("ratio", pa.float32()),
        ("cos", pa.float32()),
        ("kept", pa.bool_()),
        *((f"feat{j}", pa.float32()) for j in range(FEATS)),
        ("drop_filter", pa.string()),
        ("drop_reason", pa.string()),
        ("drop_score", pa.float32()),
        ("drop_detail", pa.string()),
        ("choice", pa.int32()),
    ]
)


class ScoredSpill:
    """Every block's filter columns in ``folder`` (``rows.arrow``, ``groups.arrow``); :meth:`block` reads one back.
    Global row ``offsets[b] + i`` is row ``i`` of block ``b`` (the order of the blocks, as they were added)."""

    def __init__(self, folder: Path, scorers: int):
        self.folder, self.scorers = Path(folder), scorers
        self.offsets, self.group_offsets = [0], [0]
        self.rows = Spool(self.folder / "rows.arrow", _row_schema(scorers), indexed=True)
        self.groups = Spool(self.folder / "groups.arrow", GROUP_SCHEMA, indexed=True)

    @property
    def blocks(self) -> int:
        return len(self.offsets) - 1

    @property
    def n(self) -> int:
        return self.offsets[-1]

    def add(self, sc: Scored) -> None:
        """Append one block's columns (its rows' positive numbers are the block's own)."""
        gaps, feats = np.asarray(sc.gaps), np.asarray(sc.feats).reshape(sc.n, FEATS)
        gaps = gaps.reshape(sc.n, -1) if gaps.size else np.zeros((sc.n, self.scorers))
        if gaps.shape[1] != self.scorers:
            raise ValueError(f"ScoredSpill: expected {self.scorers} blind gap columns, got {gaps.shape[1]}")
        self.rows.write(
            pa.record_batch(
                [
                    pa.array(sc.ids.tolist(), pa.binary()),
                    pa.array(key_rank([i.decode() for i in sc.ids.tolist()])),
                    pa.array(sc.strata.tolist(), pa.string()),
                    pa.array(sc.splits.tolist(), pa.string()),
                    pa.array(sc.pinned),
                    pa.array(sc.surface_sim, pa.float32()),
                    pa.array(sc.band, pa.float32()),
                    pa.array(sc.semantic_sim, pa.float32()),
                    pa.array(sc.pos_of_row, pa.int64()),
                    pa.array(sc.dup_key, pa.uint64()),
                    pa.array(sc.near, pa.float32()),
                    *(pa.array(gaps[:, j], pa.float64()) for j in range(self.scorers)),
                    *(pa.array(feats[:, j], pa.float32()) for j in range(FEATS)),
                ],
                schema=self.rows.schema,
            )
        )
        drops = [sc.positive_drops.get(g) for g in sc.pos_groups]
        pf = np.asarray(sc.pos_feats).reshape(len(sc.pos_groups), FEATS)
        self.groups.write(
            pa.record_batch(
                [
                    pa.array(sc.pos_groups, pa.string()),
                    pa.array(sc.pos_ratio, pa.float32()),
                    pa.array(sc.pos_cos, pa.float32()),
                    pa.array(sc.pos_kept, pa.bool_()),
                    *(pa.array(pf[:, j], pa.float32()) for j in range(FEATS)),
                    pa.array([d and d.filter for d in drops], pa.string()),
                    pa.array([d and d.reason for d in drops], pa.string()),
                    pa.array([d and d.score for d in drops], pa.float32()),
                    pa.array([d and d.detail for d in drops], pa.string()),
                    pa.array(np.zeros(len(sc.pos_groups)) if sc.pos_choice is None else sc.pos_choice, pa.int32()),
                ],
                schema=GROUP_SCHEMA,
            )
        )
        self.offsets.append(self.offsets[-1] + sc.n)
        self.group_offsets.append(self.group_offsets[-1] + len(sc.pos_groups))

    def batch(self, b: int) -> pa.RecordBatch:
        """Block ``b``'s rows as a record batch (a pass that needs a few columns reads only those)."""
        return self.rows.batch(b)

    def block(self, b: int) -> Scored:
        """Block ``b``'s columns as :class:`Scored`."""
        return scored_of(self.rows.batch(b), self.groups.batch(b), self.scorers)

    def __iter__(self) -> Iterator[tuple[int, Scored]]:
        for b in range(self.blocks):
            yield b, self.block(b)


def _np(batch: pa.RecordBatch, name: str) -> np.ndarray:
    return batch.column(name).to_numpy(zero_copy_only=False)


def scored_of(rows: pa.RecordBatch, groups: pa.RecordBatch, scorers: int) -> Scored:
    """One block's :class:`Scored` from its two record batches."""
    n, g = rows.num_rows, groups.num_rows
    gaps = np.column_stack([_np(rows, f"gap{j}") for j in range(scorers)]) if scorers else np.zeros((n, 0))
    drops = {}
    for name, f, r, s, d in zip(
        *(groups.column(c).to_pylist() for c in ("group", "drop_filter", "drop_reason", "drop_score", "drop_detail"))
    ):
        if r is not None:
            drops[name] = Drop(FilterName(f), Reason(r), s, d)
    ids = np.asarray(rows.column("id").to_pylist(), dtype="S") if n else np.zeros(0, "S1")
    return Scored(
        ids,
        _shared(_np(rows, "stratum").tolist()),
        _shared(_np(rows, "split").tolist()),
        _np(rows, "pinned"),
        _np(rows, "surface_sim"),
        _np(rows, "band"),
        _np(rows, "semantic_sim"),
        _np(rows, "pos_of_row"),
        _np(rows, "dup_key"),
        _np(rows, "near"),
        gaps.reshape(n, scorers),
        np.column_stack([_np(rows, f"feat{j}") for j in range(FEATS)]).reshape(n, FEATS),
        groups.column("group").to_pylist(),
        _np(groups, "ratio"),
        _np(groups, "cos"),
        _np(groups, "kept"),
        np.column_stack([_np(groups, f"feat{j}") for j in range(FEATS)]).reshape(g, FEATS),
        drops,
        _np(groups, "choice").astype(np.int64),
    )


class Smallest:
    """The ``k`` rows of smallest rank seen so far, over any number of :meth:`add` calls: a uniform sample of at
    most ``k`` rows that does not depend on the order rows came in (every row, when ``k`` or fewer came)."""

    def __init__(self, k: int):
        self.k, self.seen = k, 0
        self.rank = np.zeros(0, np.uint64)
        self.cols: dict[str, np.ndarray] = {}

    def add(self, rank: np.ndarray, **cols: np.ndarray) -> None:
        self.seen += len(rank)
        self.rank = np.concatenate([self.rank, rank])
        self.cols = {k: np.concatenate([self.cols[k], v]) if k in self.cols else np.asarray(v) for k, v in cols.items()}
        if len(self.rank) > 2 * self.k:
            self._trim()

    def _trim(self) -> None:
        if len(self.rank) > self.k:
            at = np.argpartition(self.rank, self.k - 1)[: self.k] if self.k else np.zeros(0, np.int64)
            self.rank, self.cols = self.rank[at], {k: v[at] for k, v in self.cols.items()}

    def result(self, order: str | None = None) -> dict[str, np.ndarray]:
        """The sample's columns (with ``rank``), sorted by the column ``order`` (by rank when None)."""
        self._trim()
        cols = {**self.cols, "rank": self.rank}
        at = np.argsort(cols[order] if order else self.rank, kind="stable")
        return {k: v[at] for k, v in cols.items()}


class Duplicates:
    """Exact duplicates over every block, out of core: the rows' pair keys hash-partitioned into Arrow files, each
    partition sorted by (key, published first, row); a row after the first of its key repeats that first row."""

    SCHEMA = pa.schema([("key", pa.uint64()), ("row", pa.int64()), ("pinned", pa.bool_()), ("id", pa.binary())])
    FOUND = pa.schema([("row", pa.int64()), ("first_pinned", pa.bool_()), ("first_id", pa.binary())])

    def __init__(self, spill: ScoredSpill, folder: Path, partition_rows: int):
        parts = max(1, -(-spill.n // partition_rows))
        spools = [Spool(folder / f"dedup-{p}.arrow", self.SCHEMA) for p in range(parts)]
        for b in range(spill.blocks):
            rb = spill.batch(b)
            key = rb.column("dup_key").to_numpy()
            published = rb.column("pinned")  # only a published row's id is ever named: the others' stay null
            table = pa.table(
                [
                    rb.column("dup_key"),
                    pa.array(spill.offsets[b] + np.arange(rb.num_rows)),
                    published,
                    pc.if_else(published, rb.column("id"), pa.scalar(None, pa.binary())),
                ],
                schema=self.SCHEMA,
            )
            for p, s in enumerate(spools):
                s.write(table.filter(pa.array(key % np.uint64(parts) == p)) if parts > 1 else table)
        self.found = []
        for p, s in enumerate(spools):
            t = pa.concat_tables(list(s.tables()), promote_options="none") if s.num_rows else self.SCHEMA.empty_table()
            key, row, pinned = (t.column(c).to_numpy() for c in ("key", "row", "pinned"))
            order = np.lexsort((row, ~pinned, key))
            k = key[order]
            first_of_key = np.r_[True, k[1:] != k[:-1]] if len(k) else np.zeros(0, bool)
            first = order[np.maximum.accumulate(np.where(first_of_key, np.arange(len(k)), 0))]  # (n,) in sorted order
            dup = np.flatnonzero(~first_of_key)
            at = np.argsort(row[order[dup]])
            dup_rows, firsts = row[order[dup]][at], first[dup][at]
            out = Spool(folder / f"found-{p}.arrow", self.FOUND)
            out.write(
                pa.table(
                    [pa.array(dup_rows), pa.array(pinned[firsts]), t.column("id").take(pa.array(firsts))],
                    schema=self.FOUND,
                )
            )
            out.close()
            s.close()
            s.path.unlink()
            self.found.append(out)

    def block(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
        """The duplicates among rows [lo, hi): (rows - lo, whether the first is published, the first's id)."""
        rows, pinned, ids = [], [], []
        for out in self.found:
            for t in out.tables():
                r = t.column("row").to_numpy()
                a, z = np.searchsorted(r, [lo, hi])
                if z > a:
                    rows.append(r[a:z] - lo)
                    pinned.append(t.column("first_pinned").to_numpy(zero_copy_only=False)[a:z])
                    ids += t.column("first_id").slice(a, z - a).to_pylist()
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, bool), []
        return np.concatenate(rows), np.concatenate(pinned), ids


class Cells:
    """Blind balancing out of core: per stratum, the |gap| bin edges (from a sample), then each cell's rows per
    bucket of id hash, then each cell's selection: every row in a bucket below its boundary bucket, and in the
    boundary bucket the rows of smallest hash up to the quota (the in-memory rule: smallest hashes first)."""

    def __init__(self, cfg: FilterConfig, scorers: int, edge_sample: int):
        self.edge_sample = edge_sample
        self.bins, self.scorers, self.max_rate = cfg.blind.bins, scorers, cfg.blind.max_rate
        self.samples: dict[str, Smallest] = {}
        self.hist: dict[str, dict[int, np.ndarray]] = {}
        self.boundary: dict[tuple[str, int], Smallest] = {}
        self.edges: dict[str, list] = {}
        self.top: dict[tuple[str, int], int] = {}

    def sample(self, label: np.ndarray, rank: np.ndarray, gaps: np.ndarray) -> None:
        for s in np.unique(label):
            m = label == s
            self.samples.setdefault(s, Smallest(self.edge_sample)).add(rank[m], gaps=gaps[m])

    def _codes(self, label: np.ndarray, gaps: np.ndarray) -> np.ndarray:
        code = np.zeros(len(label), dtype=np.int64)
        for s in np.unique(label):
            m = label == s
            if s not in self.edges:
                self.edges[s] = gap_edges(self.samples[s].result()["gaps"], self.bins)
            code[m] = cell_codes(gaps[m], self.edges[s], self.bins)
        return code

    def count(self, label: np.ndarray, rank: np.ndarray, gaps: np.ndarray) -> None:
        code, bucket = self._codes(label, gaps), _bucket(rank)
        for (s, c), members in _by_cell(label, code).items():
            h = self.hist.setdefault(s, {}).setdefault(c, np.zeros(1 << BUCKET_BITS, np.int64))
            h += np.bincount(bucket[members], minlength=1 << BUCKET_BITS)

    def plan(self) -> None:
        """Each cell's boundary bucket and the rows it may keep there."""
        self.cut: dict[tuple[str, int], tuple[int, int]] = {}
        for s, cells in self.hist.items():
            codes = np.array(sorted(cells), dtype=np.int64)
            counts = np.array([cells[c].sum() for c in codes.tolist()], dtype=np.int64)
            for c, quota in zip(
                codes.tolist(), cell_quotas(codes, counts, self.bins, self.scorers, self.max_rate).tolist()
            ):
                cum = np.cumsum(cells[c])
                at = int(np.searchsorted(cum, quota, side="left")) if quota else -1  # the bucket where the quota is met
                self.cut[(s, c)] = (at, quota - (int(cum[at - 1]) if at > 0 else 0))

    def boundary_rows(self, label: np.ndarray, rank: np.ndarray, gaps: np.ndarray, rows: np.ndarray) -> None:
        code, bucket = self._codes(label, gaps), _bucket(rank)
        for (s, c), members in _by_cell(label, code).items():
            at, need = self.cut[(s, c)]
            m = members[bucket[members] == at]
            if len(m):
                self.boundary.setdefault((s, c), Smallest(need)).add(rank[m], row=rows[m])

    def keep(self, label: np.ndarray, rank: np.ndarray, gaps: np.ndarray) -> np.ndarray:
        if not self.top and self.boundary:
            self.top = {cell: int(s.result()["rank"].max()) for cell, s in self.boundary.items()}
        code, bucket = self._codes(label, gaps), _bucket(rank)
        keep = np.zeros(len(label), dtype=bool)
        for (s, c), members in _by_cell(label, code).items():
            at = self.cut[(s, c)][0]
            top = self.top.get((s, c))
            edge = (bucket[members] == at) & (rank[members] <= np.uint64(top)) if top is not None else False
            keep[members] = (bucket[members] < at) | edge
        return keep


def _bucket(rank: np.ndarray) -> np.ndarray:
    """(N,) each rank's bucket: its top ``BUCKET_BITS`` bits."""
    return (rank >> np.uint64(64 - BUCKET_BITS)).astype(np.int64)


def _by_cell(label: np.ndarray, code: np.ndarray) -> dict[tuple[str, int], np.ndarray]:
    """The rows of each (stratum, cell)."""
    out: dict[tuple[str, int], np.ndarray] = {}
    for s in np.unique(label):
        m = np.flatnonzero(label == s)
        for c in np.unique(code[m]).tolist():
            out[(str(s), c)] = m[code[m] == c]
    return out
