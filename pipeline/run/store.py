"""The resumable store of a run directory.

Raw LLM results are kept in ``raw/part-<hash>.arrow`` files, one row per unit, written atomically;
a part exists only complete, and its name is the hash of the unit keys it holds. On a rerun, every
unit whose key is in a part is reused; only missing units are generated. Which unit is in which file is held
as 16-byte digests (:class:`~pipeline.shards.keys.FileIndex`, built once per run from the files' ``unit_key`` columns
and grown by each
commit): a resumed run of millions of units holds no key as a Python string. ``DIR/.lock`` (flock)
keeps a second concurrent run out; the kernel drops the lock when a run dies, even by SIGKILL.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import DatasetError, RunLockedError
from pipeline.records import RawResult, Rejection
from pipeline.shards.folder import check_output, claim_output
from pipeline.shards.keys import FileIndex
from pipeline.shards.schema import (
    RAW_SCHEMA,
    REJECTED_SCHEMA,
    raw_part_of_earlier_version,
    raw_results,
    raw_table,
    rejected_table,
)
from pipeline.shards.writer import ShardInfo, atomically, read_stream, sha256_file, write_atomic


def _part_name(prefix: str, keys: list[str]) -> str:
    """``{prefix}-<hash of the sorted unit keys>.arrow``: the same units always make the same file."""
    return f"{prefix}-" + hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:20] + ".arrow"


class RunStore:
    """The run directory: ``kind`` given, entering it claims the folder first (:mod:`pipeline.shards.folder`:
    a folder that is not a contrastgen ``kind`` dataset is refused unless ``overwrite``)."""

    def __init__(self, root: Path, kind: str | None = None, overwrite: bool = False):
        self.root = Path(root)
        self.raw_dir = self.root / "raw"
        self.kind, self.overwrite = kind, overwrite
        self._lock_fd: int | None = None
        self._index: FileIndex | None = None
        self.journal: list[tuple[str, list[str]]] | None = None  # (file name, unit keys) of each commit, when a list
        self.made: set[str] = set()  # names of the raw files this store's run committed (its own cost)

    def _lock(self) -> int:
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(
                f"{self.root}: another contrastgen run is writing this directory (lock {self.root / '.lock'} "
                "is held). Fix: wait for it to finish, or choose another --out."
            ) from None
        return fd

    def ensure_free(self) -> None:
        """Fail at once when another run holds the directory (before any slow start-up)."""
        if (self.root / ".lock").exists():
            fd = self._lock()
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def preflight(self) -> None:
        """Before any slow start-up: the folder is not locked by another run, and may be written by this one."""
        if self.kind is not None:  # a store opened by a part worker checks nothing: the driver's run did
            check_output(self.root, self.kind, self.overwrite)
        if self.root.is_dir():
            self.ensure_free()

    def __enter__(self) -> RunStore:
        if self.kind is not None:
            claim_output(self.root, self.kind, self.overwrite)
        self.root.mkdir(parents=True, exist_ok=True)
        self.raw_dir.mkdir(exist_ok=True)
        self._lock_fd = self._lock()
        for stale in self.raw_dir.glob(".*.tmp-*"):  # temp files of a killed run; never complete
            stale.unlink()
        return self

    def __exit__(self, *exc) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    @classmethod
    def reader(cls, root: Path, index: FileIndex) -> RunStore:
        """A store that only reads, on another process, with the driver's index of ``raw/`` (no lock, no scan)."""
        store = cls(root)
        store._index = index
        return store

    def parts(self) -> list[Path]:
        return sorted(self.raw_dir.glob("part-*.arrow"))

    def _checked(self, path: Path) -> pa.Table:
        try:
            return read_stream(path)
        except (OSError, pa.ArrowException) as exc:
            raise DatasetError(
                f"{path}: expected a complete raw part (they are written atomically), found an unreadable "
                f"file ({exc}): it was damaged after it was written. Fix: delete it; a rerun generates its "
                "units again"
            ) from exc

    def _read(self, path: Path) -> pa.Table:
        table = raw_part_of_earlier_version(self._checked(path))
        if table.schema != RAW_SCHEMA:
            raise DatasetError(
                f"{path}: expected the raw-part schema of this contrastgen version, found {table.schema}. "
                "Fix: resume with the contrastgen version that wrote it, or use another --out"
            )
        return table

    def _read_failed(self, path: Path) -> pa.Table:
        table = self._checked(path)
        if table.schema != REJECTED_SCHEMA:
            raise DatasetError(
                f"{path}: expected the rejected-row schema of this contrastgen version, found {table.schema}. "
                "Fix: delete the file (its units are generated again)"
            )
        return table

    def failed_parts(self) -> list[Path]:
        return sorted(self.raw_dir.glob("failed-*.arrow"))

    @property
    def index(self) -> FileIndex:
        """The finished units' index: built from every part's and given-up file's keys on first use (one read of
        each file's key column), then grown by this store's own commits."""
        if self._index is None:
            self._index = FileIndex()
            for path in self.parts():
                self._index.add(path, self._read(path).column("unit_key").to_pylist())
            for path in self.failed_parts():
                self._index.add(path, self._read_failed(path).column("unit_key").to_pylist())
        return self._index

    def committed_units(self) -> int:
        """Units in ``raw/`` now, read from disk (a stopped run's count: the workers' last commits, which the driver may
        not have indexed yet, included)."""
        return sum(self._read(p).num_rows for p in self.parts()) + sum(
            self._read_failed(p).num_rows for p in self.failed_parts()
        )

    def done(self, keys: list[str]) -> np.ndarray:
        """(N,) bool: units finished, generated (``part-*``) or given up on (``failed-*``: crashed or timed out for
        good)."""
        return self.index.done(keys)

    def _committed(self, name: str, keys: list[str]) -> None:
        """A file of ``raw/`` committed here (or by a worker, see :mod:`pipeline.run.stream`): index its keys, once
        the index exists (built later, it reads the file from disk), and journal them when asked to."""
        self.made.add(name)
        if self._index is not None:
            self._index.add(self.raw_dir / name, keys)
        if self.journal is not None:
            self.journal.append((name, keys))

    def adopt(self, journal: Iterable[tuple[str, list[str]]]) -> None:
        """Index the files another process committed to ``raw/`` (a Ray Data worker's journal)."""
        for name, keys in journal:
            self._committed(name, keys)

    def write_failures(self, failures: list[Rejection]) -> None:
        """Units the engine could not complete (``engine_crash``, ``engine_timeout``), one atomic file; a rerun
        does not send them again (delete ``raw/failed-*.arrow`` to try them once more)."""
        keys = [r.unit_key or "" for r in failures]
        name = _part_name("failed", keys)
        write_atomic(self.raw_dir / name, rejected_table(sorted(failures, key=lambda r: r.unit_key or "")))
        self._committed(name, keys)

    def read_failures(self, keys: list[str]) -> list[Rejection]:
        """The given-up units among ``keys``, as generation rejections, one per key, sorted by key."""
        seen: dict[str, Rejection] = {}
        wanted = pa.array(keys, pa.string())
        for path in self.index.files_of(keys):
            if path.name.startswith("failed-"):
                table = self._read_failed(path)
                for d in table.filter(pc.is_in(table.column("unit_key"), value_set=wanted)).to_pylist():
                    seen.setdefault(d["unit_key"], Rejection(**d))
        return [seen[k] for k in sorted(seen)]

    def write_part(self, results: list[RawResult]) -> ShardInfo:
        name = _part_name("part", [r.unit_key for r in results])
        path = self.raw_dir / name
        write_atomic(path, raw_table(sorted(results, key=lambda r: r.unit_key)))
        self._committed(name, [r.unit_key for r in results])
        return ShardInfo(f"raw/{name}", "raw", len(results), sha256_file(path), path.stat().st_size)

    def write_plan(self, tables) -> ShardInfo:
        """The unit keys the finished dataset is built from (``tables`` with a ``unit_key`` column, in a fixed
        order) streamed to ``plan.arrow`` (``raw/`` may hold parts of other plans too)."""
        path = self.root / "plan.arrow"
        schema = pa.schema([("unit_key", pa.string())])

        def write(tmp: Path) -> None:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                for t in tables:
                    writer.write_table(t.select(["unit_key"]))
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())

        atomically(path, write)
        with pa.memory_map(str(path)) as source:
            rows = sum(b.num_rows for b in pa.ipc.open_stream(source))
        return ShardInfo("plan.arrow", "plan", rows, sha256_file(path), path.stat().st_size)

    def read_part(self, name: str) -> pa.Table:
        """The raw part or given-up file ``raw/<name>`` as this version reads it."""
        path = self.raw_dir / name
        return self._read(path) if name.startswith("part-") else self._read_failed(path)

    def read_plan(self) -> list[str]:
        return read_stream(self.root / "plan.arrow").column("unit_key").to_pylist()

    def part_infos(self) -> list[ShardInfo]:
        return [
            ShardInfo(f"raw/{p.name}", "raw", self._read(p).num_rows, sha256_file(p), p.stat().st_size)
            for p in self.parts()
        ]

    def read_raw(self, keys: list[str] | None = None) -> list[RawResult]:
        """Raw results (only ``keys`` when given: only the parts that hold them are read), one per unit key,
        sorted by key."""
        seen: dict[str, RawResult] = {}
        wanted = None if keys is None else pa.array(keys, pa.string())
        paths = self.parts() if keys is None else [p for p in self.index.files_of(keys) if p.name.startswith("part-")]
        for path in paths:
            table = self._read(path)
            if wanted is not None:
                table = table.filter(pc.is_in(table.column("unit_key"), value_set=wanted))
            for r in raw_results(table):
                seen.setdefault(r.unit_key, r)
        return [seen[k] for k in sorted(seen)]


def store_of(cfg, kind: str) -> RunStore:
    """The run store of ``cfg.output.dir`` for a ``kind`` run (claims the folder on entry)."""
    return RunStore(cfg.output.dir, kind, cfg.output.overwrite)
