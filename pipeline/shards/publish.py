"""Publishing a finalize's tables as shards: the first time whole, later runs incrementally.

A dataset folder is append-only while its settings stay the same. A rerun (a scheduled deployment whose
input file grew, or a resumed run) writes only rows that no published shard holds, as new shards of its
own release (``data/{split}-rNNN-...arrow``, matched by the card's ``data/{split}-*.arrow`` patterns);
published shards are never rewritten, so a consumer that copied them keeps a valid prefix of the dataset.
When the settings that decide rows change (the kind's filters, the split fraction, contrastgen's
version), the folder is published whole again as release 0: old rows may no longer pass.

An append never contradicts a release (:func:`previous_release`): rows of units planned before keep their
decision (published rows stay, rejected ones stay rejected), only rows of new units go through the filters,
with the published rows pinned beside them, so a new row that duplicates a published one is rejected
(``duplicate_of_published``, naming it) and no row is ever both published and rejected.

``manifest.json`` is the commit point: it lists the published shards and the releases. It is written last
(after the card), each file atomically. Before writing shards, a publish records their paths in
``.publish-ledger.json``; shards a crashed finalize wrote but no manifest lists are deleted by the next one
(which writes them again). Only shards the old manifest or the ledger names are ever deleted: a file a user
put in ``data/`` is not ours and stays.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline import __version__
from pipeline.shards.keys import KeySet
from pipeline.shards.writer import (
    ShardInfo,
    ShardWriter,
    Spool,
    read_shard,
    read_stream,
    sha256_file,
    shard_names,
    write_bytes_atomic,
)

LEDGER = ".publish-ledger.json"  # shard paths a publish writes, recorded before it writes them
REJECTION_KEY = ("stage", "reason", "source_id", "task", "unit_key", "file", "line", "raw")


def settings_sha(
    cfg, kind: str, columns: list[str] | tuple[str, ...] = (), assembly: dict[str, Any] | None = None
) -> str:
    """Hash of what decides a kind's rows once its units are generated (its filters, the split, and ``assembly``:
    the kind's settings that decide rows when its results are assembled), and of the rows' ``columns``: an append
    never adds shards of another layout beside published ones (a new column republishes the dataset whole)."""
    blob = {
        "kind": kind,
        "filters": cfg.filters_for(kind).model_dump(mode="json"),
        "test_fraction": cfg.output.test_fraction,
        "version": __version__,
        "block_sources": cfg.output.block_sources,
        "columns": list(columns),
    }
    blob.update(assembly or {})
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _manifest(root: Path) -> dict | None:
    path = root / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _previous(m: dict | None, root: Path, sha: str) -> tuple[list[ShardInfo], list[dict]] | None:
    """(shards, releases) of the folder's manifest when its settings match ``sha``, every listed shard is there and
    the plan it lists is the one on disk, else None (publish whole). A run killed after it replaced ``plan.arrow``
    and before its manifest left a newer plan, whose units were never published: they must not count as decided."""
    if (
        m is None
        or m.get("publish", {}).get("settings_sha") != sha
        or not all((root / s["path"]).is_file() for s in m["shards"])
    ):
        return None
    plan = m.get("plan")
    if plan is not None and (not (root / plan["path"]).is_file() or sha256_file(root / plan["path"]) != plan["sha256"]):
        return None
    return [ShardInfo(**s) for s in m["shards"]], list(m["publish"]["releases"])


@dataclass(frozen=True)
class Release:
    """What an append must not contradict: the ids of every published row, and the unit keys the dataset was
    built from (rows of those units were decided then: published, or rejected); as digests, not strings."""

    ids: KeySet
    plan: KeySet


def previous_release(root: Path, sha: str) -> Release | None:
    """The published state a finalize with settings ``sha`` appends to; None when it publishes whole."""
    m = _manifest(root)
    prev = _previous(m, root, sha)
    plan = (m or {}).get("plan")
    if prev is None or plan is None:  # (prev: the plan on disk is the one the manifest lists)
        return None
    return Release(_ids(root, prev[0]), KeySet.of(read_stream(root / plan["path"]).column("unit_key").to_pylist()))


def _ids(root: Path, shards: list[ShardInfo]) -> KeySet:
    """The row ids of the published data shards (one shard read at a time)."""
    ids = KeySet()
    for s in shards:
        if s.split != "rejected":
            ids.add(read_shard(root, s).column("id").to_pylist())
    return ids


def _ledger(root: Path) -> list[str]:
    """Shard paths an earlier publish was about to write (a crash may have left them unlisted)."""
    try:
        return list(json.loads((root / LEDGER).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return []


def _record(root: Path, paths: list[str]) -> None:
    """Write the ledger before the shards: the next publish may then delete what this one leaves unlisted."""
    write_bytes_atomic(root / LEDGER, json.dumps(sorted(set(paths))).encode("utf-8"))


def _rejection_keys(table: pa.Table) -> list[str]:
    cols = [table.column(c).to_pylist() for c in REJECTION_KEY]
    return [json.dumps(k) for k in zip(*cols)]


def _fresh(root: Path, old: list[ShardInfo], split: str, ids: KeySet | None = None):
    """A function keeping the rows of a table that no published shard of ``split`` holds; ``ids``: the published
    row ids, when the caller has read them already (:func:`previous_release`)."""
    if split == "rejected":
        seen = KeySet()
        for s in old:
            if s.split == split:
                seen.add(_rejection_keys(read_shard(root, s)))
        return lambda t: t.filter(pa.array(~seen.has(_rejection_keys(t)), pa.bool_()))
    seen = ids if ids is not None else _ids(root, [s for s in old if s.split == split])
    return lambda t: t.filter(pa.array(~seen.has(t.column("id").to_pylist()), pa.bool_()))


def _batches(rows: pa.Table | Spool):
    return [rows] if isinstance(rows, pa.Table) else rows.tables()


def _write(
    root: Path, split: str, rows: pa.Table | Spool, total: int, rows_per_shard: int, tag: str | None, keep=None
) -> list[ShardInfo]:
    with ShardWriter(root, split, rows_per_shard, total, subdir=_subdir(split), tag=tag) as w:
        for t in _batches(rows):
            w.write(t if keep is None else keep(t))
        if not total:  # an empty split is one empty shard (its schema, for readers)
            w.write(rows.schema.empty_table())
    return w.finalize()


def _subdir(split: str) -> str:
    return "rejected" if split == "rejected" else "data"


def _names(split: str, rows: int, rows_per_shard: int, tag: str | None) -> list[str]:
    """The paths :func:`_write` gives a split's shards (for the ledger, before they exist)."""
    return shard_names(split, rows, rows_per_shard, _subdir(split), tag)


def publish(
    root: Path,
    tables: dict[str, pa.Table | Spool],
    rows_per_shard: int,
    sha: str,
    run_id: str | None,
    published_ids: KeySet | None = None,
) -> tuple[list[ShardInfo], dict]:
    """Write ``tables`` (split -> rows, ``rejected`` included; a table or a :class:`Spool`) whole or incrementally;
    return every published shard and the manifest's ``publish`` record (settings hash and releases). Deletes only
    shards contrastgen wrote: those the old manifest lists and those in the ledger of an earlier, interrupted
    publish. An append reads its rows twice (count the fresh ones, then write them), one batch at a time."""
    m = _manifest(root)
    prev = _previous(m, root, sha)
    ours = {s["path"] for s in (m or {}).get("shards", [])} | {p for p in _ledger(root) if (root / p).exists()}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if prev is None:
        _record(
            root, [*ours, *(n for split, t in tables.items() for n in _names(split, t.num_rows, rows_per_shard, None))]
        )
        shards = [s for split, t in tables.items() for s in _write(root, split, t, t.num_rows, rows_per_shard, None)]
        releases = [
            {
                "release": 0,
                "run_id": run_id,
                "time": stamp,
                "mode": "whole",
                "added": {split: t.num_rows for split, t in tables.items()},
            }
        ]
    else:
        shards, releases = prev
        tag = f"r{len(releases):03d}"
        keep = {split: _fresh(root, shards, split, published_ids) for split in tables}
        fresh = {split: sum(keep[split](b).num_rows for b in _batches(t)) for split, t in tables.items()}
        _record(root, [*ours, *(n for split, k in fresh.items() if k for n in _names(split, k, rows_per_shard, tag))])
        new = [
            s
            for split, t in tables.items()
            if fresh[split]
            for s in _write(root, split, t, fresh[split], rows_per_shard, tag, keep[split])
        ]
        if new:
            shards = shards + new
            releases.append(
                {"release": len(releases), "run_id": run_id, "time": stamp, "mode": "append", "added": dict(fresh)}
            )
    for stale in sorted(ours - {s.path for s in shards}):
        (root / stale).unlink(missing_ok=True)
    return shards, {"settings_sha": sha, "releases": releases}


def split_of(source_id: str, test_fraction: float) -> str:
    """Deterministic split by a hash of the source id (all rows of one caption or question share it): part of
    the output contract, so the card and the writers use it without reaching into the run steps."""
    bucket = int(hashlib.sha256(source_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if bucket < test_fraction else "train"


def split_key(row) -> str:
    """The id a row's split is drawn from: its group where it has one (the captions of a group are positives of
    each other, so one in test and another in train would leak), else its source id."""
    return getattr(row, "group", None) or row.source_id


def published_splits(shards: list[ShardInfo]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in shards:
        if s.split != "rejected":
            out[s.split] = out.get(s.split, 0) + s.rows
    return out
