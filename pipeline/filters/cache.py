"""Per-text vectors (sentence embeddings, LM scores) cached on disk by content hash.

One folder per scorer (``root/<sha of scorer id>/``); texts not cached are encoded in chunks of ``chunk``
texts, each written as one atomic Arrow part as soon as it is done, so a killed run keeps every finished
chunk and a rerun with the same texts computes nothing. Only the vectors of the texts asked for are read back,
and only from the parts that hold them (an index of every part's keys as 16-byte digests, built once); a caller
that works in blocks calls :meth:`TextCache.forget` after each, so memory follows a block's texts, not every
text ever scored. The
scorer is a plain callable ``texts -> [N, D] array``; it is only called (and so its model only loaded, when
the caller makes it lazy) for texts not cached yet.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.shards.keys import FileIndex
from pipeline.shards.writer import read_stream, write_atomic


def default_cache_root() -> Path:
    """$CONTRASTGEN_CACHE or ~/.cache/contrastgen (the same root as the dequantized model cache)."""
    return Path(os.environ.get("CONTRASTGEN_CACHE", Path.home() / ".cache" / "contrastgen"))


class TextCache:
    """Vectors of one scorer by sha256 of the text.

    >>> import tempfile
    >>> c = TextCache(Path(tempfile.mkdtemp()), lambda ts: np.array([[len(t)] for t in ts], float), "len")
    >>> c.get(["ab", "abc", "ab"]).ravel().tolist(), c.misses
    ([2.0, 3.0, 2.0], 2)
    """

    def __init__(
        self,
        root: Path,
        encode: Callable[[list[str]], np.ndarray],
        scorer_id: str,
        chunk: int = 8192,
        mapper: Callable[[list[list[str]]], Iterable[tuple[int, np.ndarray]]] | None = None,
    ):
        self.encode, self.chunk = encode, chunk
        # chunks of texts -> (chunk index, vectors) as each is done; default: encode them here, one after another
        self.mapper = mapper or (lambda chunks: ((i, self.encode(c)) for i, c in enumerate(chunks)))
        self.dir = Path(root) / hashlib.sha256(scorer_id.encode()).hexdigest()[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        self._row: dict[str, int] = {}  # sha256 of a text -> its row in the matrix
        self._blocks: list[np.ndarray] = []  # one (n, D) block per part; concatenated lazily
        self._matrix: np.ndarray | None = None
        self._index: FileIndex | None = None
        self.misses = 0

    def forget(self) -> None:
        """Drop the vectors held in memory (the disk cache stays): the next texts are read back as needed."""
        self._row, self._blocks, self._matrix = {}, [], None

    @property
    def index(self) -> FileIndex:
        """Which part holds each cached text: every part's key column read once, then grown by this cache's writes."""
        if self._index is None:
            self._index = FileIndex()
            for part in sorted(self.dir.glob("part-*.arrow")):
                self._index.add(part, read_stream(part).column("key").to_pylist())
        return self._index

    def _load(self, wanted: list[str]) -> None:
        """Read the cached vectors of ``wanted`` keys from the parts (one part in memory at a time)."""
        wanted = list(dict.fromkeys(wanted))
        value_set = pa.array(wanted, pa.string())
        for part in self.index.files_of(wanted):
            table = read_stream(part)
            table = table.filter(pc.is_in(table["key"], value_set=value_set))
            if table.num_rows:
                values = table["vector"].combine_chunks()
                self._add(table["key"].to_pylist(), values.flatten().to_numpy().reshape(len(table), -1))

    def _add(self, keys: list[str], block: np.ndarray) -> None:
        fresh = [i for i, k in enumerate(keys) if k not in self._row]
        for i in fresh:
            self._row[keys[i]] = len(self._row)
        if fresh:
            block = block if len(fresh) == len(keys) else block[fresh]  # no copy when every key is new
            self._blocks.append(np.asarray(block, dtype=np.float32))
            self._matrix = None

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def get(self, texts: list[str], keys: list[str] | None = None) -> np.ndarray:
        """[N, D] float32 vectors; only texts not cached are computed (and then cached).

        ``keys``: the texts' :meth:`key` when the caller already has them (one text, one sha256).
        """
        matrix, rows = self.rows(texts, keys)
        return matrix[rows] if len(texts) else np.zeros((0, 0), dtype=np.float32)

    def rows(self, texts: list[str], keys: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every cached vector [M, D] and the row of each text in it (N,), computing the texts not cached yet.

        For callers that gather rows in chunks: :meth:`get` copies N vectors at once (N x D floats).
        """
        keys = [self.key(t) for t in texts] if keys is None else keys
        try:  # the common case, every text cached: one lookup per key
            rows = np.fromiter(map(self._row.__getitem__, keys), dtype=np.int64, count=len(keys))
        except KeyError:
            self._load([k for k in keys if k not in self._row])
            self._compute(texts, keys)
            rows = np.fromiter(map(self._row.__getitem__, keys), dtype=np.int64, count=len(keys))
        if self._matrix is None:
            self._matrix = (
                (self._blocks[0] if len(self._blocks) == 1 else np.concatenate(self._blocks))
                if self._blocks
                else np.zeros((0, 0), dtype=np.float32)
            )  # (cached texts, D)
        return self._matrix, rows

    def _compute(self, texts: list[str], keys: list[str]) -> None:
        """Encode the texts not cached yet in chunks (here, or on the mapper's workers): each chunk written as one
        atomic part as soon as it is done, then added."""
        todo = list(dict.fromkeys(k for k in keys if k not in self._row))
        by_key = dict(zip(keys, texts))
        chunks = [todo[i : i + self.chunk] for i in range(0, len(todo), self.chunk)]
        if not chunks:
            return
        for i, new in self.mapper([[by_key[k] for k in c] for c in chunks]):
            new_keys = chunks[i]
            new = np.asarray(new, dtype=np.float32).reshape(len(new_keys), -1)
            table = pa.table(
                {"key": new_keys, "vector": pa.array(list(new), type=pa.list_(pa.float32(), new.shape[1]))}
            )
            path = self.dir / f"part-{hashlib.sha256(''.join(new_keys).encode()).hexdigest()[:20]}.arrow"
            write_atomic(path, table)
            if self._index is not None:
                self._index.add(path, new_keys)
            self._add(new_keys, new)
            self.misses += len(new_keys)
