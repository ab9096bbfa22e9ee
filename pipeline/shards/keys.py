"""Sets of string keys (unit keys, row ids, rejection keys) held as numbers, not Python strings.

A run at scale holds tens of millions of keys; as Python ``str`` objects each costs about 110 bytes. Here each
key is its 16-byte BLAKE2b digest in one sorted numpy array (16 bytes a key), looked up in bulk with
``searchsorted``. Two different keys share a digest with probability about n^2 / 2^129: none at any size
this tool will see.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

DIGEST = "S16"


def digests(keys: Iterable[str]) -> np.ndarray:
    """(N,) 16-byte digests of ``keys``, in order."""
    out = [hashlib.blake2b(k.encode(), digest_size=16).digest() for k in keys]
    return np.array(out, dtype=DIGEST) if out else np.zeros(0, dtype=DIGEST)


def _lookup(sorted_digests: np.ndarray, d: np.ndarray) -> np.ndarray:
    """(N,) the position of each digest of ``d`` in ``sorted_digests``, -1 where it is not there."""
    if not len(sorted_digests):
        return np.full(len(d), -1, dtype=np.int64)
    at = np.minimum(np.searchsorted(sorted_digests, d), len(sorted_digests) - 1)
    return np.where(sorted_digests[at] == d, at, -1)


class KeySet:
    """A set of keys as sorted digests; grows by :meth:`add` (merged on the next lookup).

    >>> s = KeySet.of(["a", "b"]); s.add(["c"])
    >>> s.has(["c", "d", "a"]).tolist(), len(s)
    ([True, False, True], 3)
    """

    def __init__(self, sorted_digests: np.ndarray | None = None):
        self._sorted = np.zeros(0, dtype=DIGEST) if sorted_digests is None else sorted_digests
        self._new: list[np.ndarray] = []

    @classmethod
    def of(cls, keys: Iterable[str]) -> KeySet:
        return cls(np.unique(digests(keys)))

    def add(self, keys: Iterable[str]) -> None:
        self._new.append(digests(keys))

    def _merged(self) -> np.ndarray:
        if self._new:
            self._sorted = np.unique(np.concatenate([self._sorted, *self._new]))
            self._new = []
        return self._sorted

    def has_digests(self, d: np.ndarray) -> np.ndarray:
        return _lookup(self._merged(), d) >= 0

    def has(self, keys: Iterable[str]) -> np.ndarray:
        """(N,) bool: which of ``keys`` are in the set."""
        return self.has_digests(digests(keys))

    def __len__(self) -> int:
        return len(self._merged())


class FileIndex:
    """Which file holds each key (a raw part's unit keys, a score cache part's text keys), as sorted digests;
    grows by :meth:`add`."""

    def __init__(self) -> None:
        self.files: list[Path] = []
        self._keys, self._file = np.zeros(0, dtype=DIGEST), np.zeros(0, dtype=np.int32)
        self._new: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, path: Path, keys: list[str]) -> None:
        self.files.append(path)
        self._new.append((digests(keys), np.full(len(keys), len(self.files) - 1, dtype=np.int32)))

    def _merged(self) -> tuple[np.ndarray, np.ndarray]:
        """The index with the keys added since the last lookup merged in: only they are sorted, then inserted
        (a key in two files: the first file added is found). Sorting every key again held about 70 bytes a key
        at the moment of the merge, inserting about 40 (57 against 90 MB of peak growth at 1M keys, 64 a file,
        merged every 37k keys)."""
        if self._new:
            keys = np.concatenate([k for k, _ in self._new])
            file = np.concatenate([f for _, f in self._new])
            order = np.argsort(keys, kind="stable")
            at = np.searchsorted(self._keys, keys[order], side="right")  # after an equal key of an earlier file
            self._keys, self._file = np.insert(self._keys, at, keys[order]), np.insert(self._file, at, file[order])
            self._new = []
        return self._keys, self._file

    def _find(self, keys: list[str]) -> np.ndarray:
        """(N,) the file number of each key, -1 when no file has it."""
        s, f = self._merged()
        at = _lookup(s, digests(keys))
        return np.where(at >= 0, f[np.maximum(at, 0)], -1) if len(f) else at

    def done(self, keys: list[str]) -> np.ndarray:
        """(N,) bool: which ``keys`` some file holds."""
        return self._find(keys) >= 0

    def files_of(self, keys: list[str]) -> list[Path]:
        """The files holding any of ``keys``, in the order they were added."""
        return [self.files[i] for i in np.unique(self._find(keys)).tolist() if i >= 0]
