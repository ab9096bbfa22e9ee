"""Training data: contrastgen shards (of any kind, in the training layout its kind gives them:
:data:`pipeline.kinds.base.TRAINING_COLUMNS`) -> anchor groups -> batches without duplicate anchors.

A *group* is one caption (the anchor) with its positives and its own typed negatives. Its positives are its
paraphrase and, where the dataset was made with ``input.group_column``, the other captions of its group (human
views of one image: READ, arXiv:2510.16540, found that keeping these close is what moves text encoders on
paraphrase-vs-edit tests). A caption's negatives are never anyone's positive. Each epoch an anchor is paired with
``positives_per_anchor`` of its positives, in turn (:func:`pair_positives`); a batch never holds two anchors of
one group, so no in-batch negative is a human view of the anchor's own image.
Shards are read memory-mapped (Arrow IPC streams, only the needed columns are touched); groups then hold
their texts, about 300 bytes a row for captions, so ten million rows need a few GB of RAM.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import DatasetError
from pipeline.kinds import kind_of_format
from pipeline.kinds.base import TRAINING_REQUIRED
from pipeline.shards.card import load_manifest
from pipeline.shards.writer import read_shard


@dataclass(frozen=True)
class Group:
    """One anchor, its positive (the one it is paired with now) and its typed negatives (equal-length
    tuples); ``positives``: all of them, the paraphrase first (empty: ``positive`` is the only one); ``group``: the
    input group (captions of one image), if the dataset has one."""

    anchor: str
    positive: str
    negatives: tuple[str, ...]
    types: tuple[str, ...]
    weights: tuple[float, ...]
    positives: tuple[str, ...] = ()
    group: str | None = None

    @property
    def key(self) -> str:
        """What may appear once in a batch: the group, else the anchor."""
        return self.group if self.group is not None else self.anchor


def _shards(root: Path, split: str) -> tuple[list[dict], dict]:
    """The shards of ``split`` listed in ``root/manifest.json``, and the manifest; a clear error otherwise."""
    meta = load_manifest(root)
    kind_of_format(meta.get("format"), Path(root) / "manifest.json")
    return [s for s in meta.get("shards", []) if s.get("split") == split], meta


def read_split(root: Path, split: str) -> pa.Table:
    """Memory-mapped ``split`` of one dataset, in the training layout; checks each shard against the manifest
    (size, sha256), the columns, and that the split has rows."""
    tables = []
    shards, meta = _shards(root, split)
    kind = kind_of_format(meta["format"], Path(root) / "manifest.json")
    for shard in shards:
        raw = read_shard(root, shard)
        table = kind.as_training(raw)
        missing = [c for c in TRAINING_REQUIRED if c not in table.column_names]
        if missing:
            raise DatasetError(
                f"{Path(root) / shard['path']}: expected columns that give the training layout's "
                f"{list(TRAINING_REQUIRED)}, missing {missing} (the shard has {raw.column_names}). "
                f"Fix: train on shards written by `contrastgen generate {kind.name}`."
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


def _views(table: pa.Table) -> dict[str, list[str]]:
    """group -> its distinct anchors, in order of first appearance (empty where the table has no groups)."""
    if "group" not in table.column_names or table["group"].null_count == table.num_rows:
        return {}
    views: dict[str, list[str]] = {}
    for g, anchor in zip(table["group"].to_pylist(), table["anchor"].to_pylist()):
        if g is not None and anchor not in views.setdefault(g, []):
            views[g].append(anchor)
    return views


def groups_from_table(table: pa.Table, max_negatives: int) -> tuple[list[Group], int]:
    """Group rows by source id (one anchor's rows). An anchor's positives: its own, then the other anchors of its
    input group; rows of an anchor with none cannot form a pair and are counted, not used."""
    views = _views(table)
    idx = table.append_column("_row", pa.array(np.arange(table.num_rows)))
    grouped = idx.group_by("source_id").aggregate([("_row", "list")]).sort_by("source_id")
    names = ("anchor", "positive", "negative", "type") + (("group",) if views else ())
    cols = {c: table[c].to_pylist() for c in names}
    weights = _weights(table)
    groups, skipped = [], 0
    for rows in grouped["_row_list"].to_pylist():
        rows = sorted(rows)
        anchor, gid = cols["anchor"][rows[0]], cols["group"][rows[0]] if views else None
        own = next((cols["positive"][r] for r in rows if cols["positive"][r] is not None), None)
        positives = ([own] if own is not None else []) + [
            v for v in (views.get(gid, ()) if gid is not None else ()) if v != anchor and v != own
        ]
        if not positives:
            skipped += len(rows)
            continue
        rows = rows[:max_negatives]
        groups.append(
            Group(
                anchor=anchor,
                positive=positives[0],
                negatives=tuple(cols["negative"][r] for r in rows),
                types=tuple(cols["type"][r] for r in rows),
                weights=tuple(float(weights[r]) for r in rows),
                positives=tuple(positives),
                group=gid,
            )
        )
    return groups, skipped


def pair_positives(
    groups: list[Group], per_anchor: int, seed: int, epoch: int, made: dict[tuple[int, int], Group] | None = None
) -> list[Group]:
    """Each group paired with ``per_anchor`` of its positives for this epoch (one copy of the group each, at most
    as many as it has): taken in turn from a start fixed by the anchor and ``seed``, so that consecutive epochs
    go through all of them. A group keeps its own object for its first positive (ungrouped data is not copied);
    ``made`` keeps the other pairings across epochs, so a plan of many epochs holds at most one object per
    positive, not one per epoch."""
    import hashlib

    made = {} if made is None else made
    out = []
    for g in groups:
        pos = g.positives or (g.positive,)
        start = int(hashlib.sha256(f"{seed}:{g.anchor}".encode()).hexdigest()[:8], 16) + epoch * per_anchor
        for k in sorted({(start + i) % len(pos) for i in range(min(per_anchor, len(pos)))}):
            if pos[k] == g.positive:
                out.append(g)
            else:
                out.append(made.setdefault((id(g), k), replace(g, positive=pos[k])))
    return out


def batches(groups: list[Group], batch_size: int, seed: int, epoch: int, drop_last: bool) -> list[list[Group]]:
    """Shuffled batches in which no anchor or positive text, and no input group, appears twice (in-batch negatives
    stay true).

    One pass: a group that clashes with the open batch waits and is offered to the next batches first.
    """
    order = list(groups)
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    out: list[list[Group]] = []
    batch: list[Group] = []
    seen: set[str] = set()
    waiting: list[Group] = []

    def offer(g: Group) -> bool:
        if g.anchor in seen or g.positive in seen or g.key in seen:
            return False
        batch.append(g)
        seen.update((g.anchor, g.positive, g.key))
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
    """Deterministic (train, validation) split by a hash of the anchor text (of the group, where there is one: its
    captions are positives of each other), for early stopping."""
    import hashlib

    def bucket(g: Group) -> float:
        return int(hashlib.sha256(g.key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    val = [g for g in groups if bucket(g) < fraction]
    return [g for g in groups if bucket(g) >= fraction], val
