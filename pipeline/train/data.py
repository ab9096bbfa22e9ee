"""Training data: contrastgen shards (of any kind, in the negatives layout its kind gives them) -> anchor groups ->
batches without duplicate anchors.

A *group* is one caption (the anchor) with its paraphrase positive and its own typed negatives.
Shards are read memory-mapped (Arrow IPC streams, only the needed columns are touched); groups then hold
their texts, about 300 bytes a row for captions, so ten million rows need a few GB of RAM.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import DatasetError
from pipeline.kinds import kind_of_format
from pipeline.shards.card import load_manifest
from pipeline.shards.writer import read_shard

REQUIRED = ("caption", "positive", "negative", "neg_type", "source_id")


@dataclass(frozen=True)
class Group:
    """One anchor caption, its positive and its typed negatives (equal-length tuples)."""

    anchor: str
    positive: str
    negatives: tuple[str, ...]
    neg_types: tuple[str, ...]
    weights: tuple[float, ...]


def _shards(root: Path, split: str) -> tuple[list[dict], dict]:
    """The shards of ``split`` listed in ``root/manifest.json``, and the manifest; a clear error otherwise."""
    meta = load_manifest(root)
    kind_of_format(meta.get("format"), Path(root) / "manifest.json")
    return [s for s in meta.get("shards", []) if s.get("split") == split], meta


def read_split(root: Path, split: str) -> pa.Table:
    """Memory-mapped ``split`` of one dataset; checks each shard against the manifest (size, sha256), the
    columns, and that the split has rows."""
    tables = []
    shards, meta = _shards(root, split)
    adapt = kind_of_format(meta["format"], Path(root) / "manifest.json").as_negatives  # the kind's rows in the trainer's layout
    for shard in shards:
        table = adapt(read_shard(root, shard))
        missing = [c for c in REQUIRED if c not in table.column_names]
        if missing:
            raise DatasetError(
                f"{Path(root) / shard['path']}: expected columns {list(REQUIRED)}, missing {missing} (found {table.column_names}). "
                "Fix: train on shards written by `contrastgen generate negatives`."
            )
        tables.append(table)
    if not tables or sum(t.num_rows for t in tables) == 0:
        raise DatasetError(
            f"{root}: expected rows in the {split!r} split, found none. Fix: generate more captions "
            "(or a larger output.test_fraction for the test split)."
        )
    return pa.concat_tables(tables, promote_options="default")


def _weights(table: pa.Table) -> np.ndarray:
    if "weight" not in table.column_names:
        return np.ones(table.num_rows, dtype=np.float32)
    return pc.fill_null(table["weight"], 1.0).to_numpy(zero_copy_only=False).astype(np.float32)


def groups_from_table(table: pa.Table, max_negatives: int) -> tuple[list[Group], int]:
    """Group rows by caption id; rows without a positive cannot form a pair and are counted, not used."""
    has_pos = pc.is_valid(table["positive"])
    skipped = table.num_rows - pc.sum(has_pos).as_py() if table.num_rows else 0
    table = table.filter(has_pos)
    idx = table.append_column("_row", pa.array(np.arange(table.num_rows)))
    grouped = idx.group_by("source_id").aggregate([("_row", "list")]).sort_by("source_id")
    cols = {c: table[c].to_pylist() for c in ("caption", "positive", "negative", "neg_type")}
    weights = _weights(table)
    groups = []
    for rows in grouped["_row_list"].to_pylist():
        rows = sorted(rows)[:max_negatives]
        groups.append(Group(
            anchor=cols["caption"][rows[0]], positive=cols["positive"][rows[0]],
            negatives=tuple(cols["negative"][r] for r in rows), neg_types=tuple(cols["neg_type"][r] for r in rows),
            weights=tuple(float(weights[r]) for r in rows),
        ))
    return groups, skipped


def batches(groups: list[Group], batch_size: int, seed: int, epoch: int, drop_last: bool) -> list[list[Group]]:
    """Shuffled batches in which no anchor or positive text appears twice (in-batch negatives stay true).

    One pass: a group that clashes with the open batch waits and is offered to the next batches first.
    """
    order = list(groups)
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    out: list[list[Group]] = []
    batch: list[Group] = []
    seen: set[str] = set()
    waiting: list[Group] = []

    def offer(g: Group) -> bool:
        if g.anchor in seen or g.positive in seen:
            return False
        batch.append(g)
        seen.update((g.anchor, g.positive))
        return True

    for g in order:
        if not offer(g):
            waiting.append(g)
        if len(batch) == batch_size:
            out.append(batch)
            batch, seen = [], set()
            waiting = [w for w in waiting if len(batch) == batch_size or not offer(w)]
    while waiting:  # only clashing groups are left: each round takes at least one
        out.append(batch) if batch else None
        batch, seen = [], set()
        waiting = [w for w in waiting if len(batch) == batch_size or not offer(w)]
    if batch:
        out.append(batch)
    if drop_last and out and len(out[-1]) < batch_size:
        out.pop()
    return out


def split_groups(groups: list[Group], fraction: float) -> tuple[list[Group], list[Group]]:
    """Deterministic (train, validation) split by a hash of the anchor text, for early stopping."""
    import hashlib

    def bucket(g: Group) -> float:
        return int(hashlib.sha256(g.anchor.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    val = [g for g in groups if bucket(g) < fraction]
    return [g for g in groups if bucket(g) >= fraction], val
