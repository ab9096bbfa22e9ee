"""Atomic, deterministic Arrow IPC stream shards.

A shard file appears only complete (written to a temp name, fsynced, renamed). Names are
``{split}-NNNNN-of-NNNNN.arrow`` so ``datasets`` picks them up by pattern.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa


@dataclass(frozen=True)
class ShardInfo:
    path: str  # relative to the dataset root
    split: str
    rows: int
    sha256: str
    num_bytes: int = 0


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, table: pa.Table) -> None:
    """Write ``table`` as an Arrow IPC stream to ``path`` atomically."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_stream(path: Path) -> pa.Table:
    """Read an Arrow IPC stream file (a shard, a raw part) memory-mapped."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class ShardWriter:
    """Context manager writing one split as shards of at most ``rows_per_shard`` rows.

    >>> import tempfile, pyarrow as pa
    >>> with ShardWriter(Path(tempfile.mkdtemp()), "train", 2, total_rows=3) as w:
    ...     w.write(pa.table({"x": [1, 2, 3]}))
    >>> [s.rows for s in w.finalize()]
    [2, 1]
    """

    def __init__(self, root: Path, split: str, rows_per_shard: int, total_rows: int, subdir: str = "data",
                 tag: str | None = None):
        self.root, self.split, self.rows_per_shard, self.subdir = Path(root), split, rows_per_shard, subdir
        self.prefix = f"{split}-{tag}" if tag else split  # a release tag keeps appended shards' names apart
        self.n_shards = max(1, math.ceil(total_rows / rows_per_shard))
        self.total_rows = total_rows
        self._shards: list[ShardInfo] = []
        self._written = 0

    def __enter__(self) -> ShardWriter:
        (self.root / self.subdir).mkdir(parents=True, exist_ok=True)
        return self

    def write(self, table: pa.Table) -> None:
        if self._written + table.num_rows > self.total_rows:
            raise ValueError(f"ShardWriter({self.split}): expected {self.total_rows} rows, got more")
        for start in range(0, max(table.num_rows, 1), self.rows_per_shard):
            chunk = table.slice(start, self.rows_per_shard)
            rel = f"{self.subdir}/{self.prefix}-{len(self._shards):05d}-of-{self.n_shards:05d}.arrow"
            write_atomic(self.root / rel, chunk)
            self._shards.append(ShardInfo(rel, self.split, chunk.num_rows, sha256_file(self.root / rel), (self.root / rel).stat().st_size))
            self._written += chunk.num_rows

    def __exit__(self, *exc) -> None:
        return None

    def finalize(self) -> list[ShardInfo]:
        if self._written != self.total_rows:
            raise ValueError(f"ShardWriter({self.split}): expected {self.total_rows} rows, wrote {self._written}")
        return list(self._shards)
