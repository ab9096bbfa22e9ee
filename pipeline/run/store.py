"""The resumable store of a run directory.

Raw LLM results are kept in ``raw/part-<hash>.arrow`` files, one row per unit, written atomically;
a part exists only complete, and its name is the hash of the unit keys it holds. On a rerun, every
unit whose key is in a part is reused; only missing units are generated. ``DIR/.lock`` (flock)
keeps a second concurrent run out; the kernel drops the lock when a run dies, even by SIGKILL.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

import pyarrow as pa

from pipeline.errors import RunLockedError
from pipeline.records import RawResult
from pipeline.shards.schema import RAW_SCHEMA, raw_results, raw_table
from pipeline.shards.writer import ShardInfo, read_stream, sha256_file, write_atomic


class RunStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.raw_dir = self.root / "raw"
        self._lock_fd: int | None = None

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

    def __enter__(self) -> RunStore:
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

    def parts(self) -> list[Path]:
        return sorted(self.raw_dir.glob("part-*.arrow"))

    def _read(self, path: Path) -> pa.Table:
        table = read_stream(path)
        if table.schema != RAW_SCHEMA:
            raise ValueError(f"{path}: expected the raw-part schema of this contrastgen version, found {table.schema}")
        return table

    def completed_keys(self) -> set[str]:
        keys: set[str] = set()
        for path in self.parts():
            keys.update(self._read(path).column("unit_key").to_pylist())
        return keys

    def write_part(self, results: list[RawResult]) -> ShardInfo:
        keys = sorted(r.unit_key for r in results)
        name = "part-" + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:20] + ".arrow"
        path = self.raw_dir / name
        write_atomic(path, raw_table(sorted(results, key=lambda r: r.unit_key)))
        return ShardInfo(f"raw/{name}", "raw", len(results), sha256_file(path), path.stat().st_size)

    def write_plan(self, keys: frozenset[str]) -> ShardInfo:
        """The unit keys the finished dataset is built from (``raw/`` may hold parts of other plans too)."""
        path = self.root / "plan.arrow"
        write_atomic(path, pa.table({"unit_key": sorted(keys)}))
        return ShardInfo("plan.arrow", "plan", len(keys), sha256_file(path), path.stat().st_size)

    def read_plan(self) -> frozenset[str]:
        return frozenset(read_stream(self.root / "plan.arrow").column("unit_key").to_pylist())

    def part_infos(self) -> list[ShardInfo]:
        return [ShardInfo(f"raw/{p.name}", "raw", self._read(p).num_rows, sha256_file(p), p.stat().st_size) for p in self.parts()]

    def read_raw(self, keys: set[str] | None = None) -> list[RawResult]:
        """Raw results (only ``keys`` when given), one per unit key, sorted by key."""
        seen: dict[str, RawResult] = {}
        for path in self.parts():
            for r in raw_results(self._read(path)):
                if keys is None or r.unit_key in keys:
                    seen.setdefault(r.unit_key, r)
        return [seen[k] for k in sorted(seen)]
