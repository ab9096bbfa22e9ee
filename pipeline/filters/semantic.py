"""Semantic similarity with an embedding model, embeddings cached on disk by content hash, and the
hard-negative knobs of sentence-transformers' ``mine_hard_negatives`` applied to given negatives.

Knobs (each off when None), for a negative n of anchor a with positive p, cosine s:
- ``max_score`` / ``min_score``: drop n when s(a, n) > max_score / s(a, n) < min_score;
- ``absolute_margin``: drop n when s(a, n) > s(a, p) - margin;
- ``relative_margin``: drop n when s(a, n) > s(a, p) - |s(a, p)| * margin;
- ``false_negative``: drop n when s(a, n) >= threshold (nearly the same meaning: not a negative).
Typed caption negatives are often *closer* to the caption than its paraphrase is (that is what makes
them hard), so the margins are off by default and only the false-negative guard is on.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.shards.writer import read_stream, write_atomic


def cosine_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise cosine of x [N, D] and y [N, D]; shape (N,).

    >>> cosine_rows(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[2.0, 0.0], [-1.0, -1.0]])).round(4).tolist()
    [1.0, -1.0]
    """
    num = (x * y).sum(1)
    den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    return (num / np.maximum(den, 1e-12)).astype(np.float32)


def semantic_reasons(s_neg: np.ndarray, s_pos: np.ndarray | None, *, false_negative: float | None = 0.95,
                     max_score: float | None = None, min_score: float | None = None,
                     absolute_margin: float | None = None, relative_margin: float | None = None) -> np.ndarray:
    """The first rule each row fails ('' when kept), in the order of the module docstring; shape (N,).

    ``s_pos`` may hold NaN (no positive): margin rules then keep the row.

    >>> semantic_reasons(np.array([0.97, 0.5, 0.2]), None, min_score=0.3).tolist()
    ['false_negative', '', 'below_min_score']
    """
    out = np.full(len(s_neg), "", dtype=object)
    pos = np.full(len(s_neg), np.nan) if s_pos is None else np.asarray(s_pos, dtype=np.float64)
    rules = [
        ("false_negative", None if false_negative is None else s_neg >= false_negative),
        ("above_max_score", None if max_score is None else s_neg > max_score),
        ("below_min_score", None if min_score is None else s_neg < min_score),
        ("absolute_margin", None if absolute_margin is None else s_neg > pos - absolute_margin),
        ("relative_margin", None if relative_margin is None else s_neg > pos - np.abs(pos) * relative_margin),
    ]
    for reason, failed in rules:  # NaN comparisons are False: a row without positive passes the margins
        if failed is not None:
            out[(out == "") & failed] = reason
    return out


class EmbeddingCache:
    """Embeddings of one model, cached under ``root/<model fingerprint>/`` by sha256 of the text.

    Each :meth:`embed` call that computes something writes one atomic Arrow part, so a killed run keeps
    what it finished and a rerun with the same texts computes nothing.
    """

    def __init__(self, root: Path, model, model_id: str):
        self.model = model
        self.dir = Path(root) / hashlib.sha256(model_id.encode()).hexdigest()[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.vectors: dict[str, np.ndarray] = {}
        self.misses = 0
        for part in sorted(self.dir.glob("part-*.arrow")):
            table = read_stream(part)
            for key, vec in zip(table["key"].to_pylist(), table["vector"].to_numpy(zero_copy_only=False)):
                self.vectors[key] = np.asarray(vec, dtype=np.float32)

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def embed(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """[N, D] normalised embeddings; only texts not cached are encoded (and then cached)."""
        keys = [self.key(t) for t in texts]
        todo = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in self.vectors))
        if todo:
            new = self.model.encode(todo, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                    show_progress_bar=False).astype(np.float32)
            new_keys = [self.key(t) for t in todo]
            table = pa.table({"key": new_keys, "vector": pa.array(list(new), type=pa.list_(pa.float32(), new.shape[1]))})
            write_atomic(self.dir / f"part-{hashlib.sha256(''.join(new_keys).encode()).hexdigest()[:20]}.arrow", table)
            self.vectors.update(zip(new_keys, new))
            self.misses += len(todo)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self.vectors[k] for k in keys])
