"""Atomic, deterministic Arrow IPC stream shards.

A shard file appears only complete (written to a temp name, fsynced, renamed). Names are
``{split}-NNNNN-of-NNNNN.arrow`` so ``datasets`` picks them up by pattern.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline.errors import DatasetError, OutputWriteError


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

    def write(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())

    atomically(path, write)


def atomically(path: Path, write) -> None:
    """Run ``write(tmp)`` then rename ``tmp`` to ``path``. A failed write (disk full, quota, read-only file
    system: pyarrow raises them as OSError too) leaves no temp file and raises :class:`OutputWriteError`."""
    tmp = Path(path).with_name(f".{Path(path).name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputWriteError(path, exc) from exc


def read_stream(path: Path) -> pa.Table:
    """Read an Arrow IPC stream file (a shard, a raw part) memory-mapped."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


def read_shard(root: Path, shard: ShardInfo | dict) -> pa.Table:
    """A published shard, checked first against what the manifest says of it (size and sha256): a missing,
    truncated or changed file is a :class:`DatasetError` naming it, never a pyarrow traceback."""
    s = shard if isinstance(shard, ShardInfo) else ShardInfo(**shard)
    path = Path(root) / s.path
    fix = (
        f"Fix: restore {s.path} from a copy, or delete it and rerun the generate command that made {root} "
        "(it republishes the dataset from raw/ with no LLM call)"
    )
    if not path.is_file():
        raise DatasetError(f"{path}: expected the shard listed in {root}/manifest.json, found no file. {fix}")
    size = path.stat().st_size
    if s.num_bytes and size != s.num_bytes:
        raise DatasetError(
            f"{path}: expected {s.num_bytes} bytes (as listed in {root}/manifest.json), found {size}: "
            f"the file is truncated or changed. {fix}"
        )
    if sha256_file(path) != s.sha256:
        raise DatasetError(
            f"{path}: expected sha256 {s.sha256[:12]}... (as listed in {root}/manifest.json), found "
            f"other content: the file is corrupt or changed. {fix}"
        )
    try:
        return read_stream(path)
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(f"{path}: expected an Arrow IPC stream, found an unreadable file ({exc}). {fix}") from exc


def write_bytes_atomic(path: Path, data: bytes) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    atomically(path, write)


def shard_names(
    split: str, total_rows: int, rows_per_shard: int, subdir: str = "data", tag: str | None = None
) -> list[str]:
    """The paths (relative to the dataset root) of a split's shards, known before any is written: a release tag
    keeps appended shards' names apart (``train-r001-00000-of-00001.arrow``)."""
    prefix, n = (f"{split}-{tag}" if tag else split), max(1, math.ceil(total_rows / rows_per_shard))
    return [f"{subdir}/{prefix}-{i:05d}-of-{n:05d}.arrow" for i in range(n)]


class ShardWriter:
    """Context manager writing one split as shards of at most ``rows_per_shard`` rows.

    >>> import tempfile, pyarrow as pa
    >>> with ShardWriter(Path(tempfile.mkdtemp()), "train", 2, total_rows=3) as w:
    ...     w.write(pa.table({"x": [1, 2, 3]}))
    >>> [s.rows for s in w.finalize()]
    [2, 1]
    """

    def __init__(
        self, root: Path, split: str, rows_per_shard: int, total_rows: int, subdir: str = "data", tag: str | None = None
    ):
        self.root, self.split, self.rows_per_shard, self.subdir = Path(root), split, rows_per_shard, subdir
        self.paths = shard_names(split, total_rows, rows_per_shard, subdir, tag)
        self.total_rows = total_rows
        self._shards: list[ShardInfo] = []
        self._written = 0
        self._pending: list[pa.Table] = []  # rows not yet in a shard (fewer than rows_per_shard)
        self._held = 0

    def __enter__(self) -> ShardWriter:
        (self.root / self.subdir).mkdir(parents=True, exist_ok=True)
        return self

    def write(self, table: pa.Table) -> None:
        """Add rows; every ``rows_per_shard`` of them (across calls) become one shard, the rest wait for more."""
        if self._written + self._held + table.num_rows > self.total_rows:
            raise ValueError(f"ShardWriter({self.split}): expected {self.total_rows} rows, got more")
        self._pending.append(table)
        self._held += table.num_rows
        while self._held >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    def _flush(self, rows: int) -> None:
        held = pa.concat_tables(self._pending) if len(self._pending) > 1 else self._pending[0]
        chunk, rest = held.slice(0, rows).combine_chunks(), held.slice(rows)
        rel = self.paths[len(self._shards)]
        write_atomic(self.root / rel, chunk)
        self._shards.append(
            ShardInfo(rel, self.split, chunk.num_rows, sha256_file(self.root / rel), (self.root / rel).stat().st_size)
        )
        self._written += chunk.num_rows
        self._pending, self._held = ([rest] if rest.num_rows else []), rest.num_rows

    def __exit__(self, *exc) -> None:
        return None

    def finalize(self) -> list[ShardInfo]:
        if self._held or (not self._shards and self._pending):  # the rest; or one empty shard for an empty split
            self._flush(self._held)
        if self._written != self.total_rows:
            raise ValueError(f"ShardWriter({self.split}): expected {self.total_rows} rows, wrote {self._written}")
        return list(self._shards)


class Spool:
    """One split's rows gathered block by block in a temporary Arrow IPC stream (``path``), so a finalize holds
    one block's rows at a time; :meth:`tables` reads them back in order, a record batch at a time (not
    memory-mapped: reading a spool does not grow the process's resident set by its size)."""

    def __init__(self, path: Path, schema: pa.Schema, indexed: bool = False):
        self.path, self.schema, self.num_rows, self.indexed = Path(path), schema, 0, indexed
        self._reader: pa.ipc.RecordBatchFileReader | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._sink = pa.OSFile(str(self.path), "wb")
            # indexed: the IPC file format, whose footer lets :meth:`batch` read any record batch by itself
            self._writer = (pa.ipc.new_file if indexed else pa.ipc.new_stream)(self._sink, schema)
        except OSError as exc:
            raise OutputWriteError(self.path, exc) from exc

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        """Append rows: a record batch is written as one batch (an indexed spool's :meth:`batch` numbers them)."""
        try:
            if isinstance(table, pa.RecordBatch):
                self._writer.write_batch(table)
            else:
                self._writer.write_table(table.cast(self.schema) if table.schema != self.schema else table)
        except OSError as exc:  # disk full, quota: the finalize fails naming the spool; a rerun starts it again
            raise OutputWriteError(self.path, exc) from exc
        self.num_rows += table.num_rows

    def batch(self, b: int) -> pa.RecordBatch:
        """Record batch ``b`` of an indexed spool (writing ends at the first read)."""
        if self._reader is None:
            self.close()
            self._reader = pa.ipc.open_file(pa.OSFile(str(self.path), "rb"))
        return self._reader.get_batch(b)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = None

    def tables(self):
        """The rows written, in order, one table per record batch."""
        self.close()
        with pa.OSFile(str(self.path), "rb") as source:
            if self.indexed:
                reader = pa.ipc.open_file(source)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            else:
                batches = pa.ipc.open_stream(source)
            for batch in batches:
                yield pa.Table.from_batches([batch], self.schema)
