"""Train-test fixtures: a tiny random sentence-transformers model (parity tests), tiny datasets."""

from __future__ import annotations

from pathlib import Path

import pytest


def make_tiny_model(path: Path) -> Path:
    """A 2-layer, 32-wide BERT with all-MiniLM-L6-v2's tokenizer, saved as a sentence-transformers folder."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from pipeline.train.config import bundled_encoder

    torch.manual_seed(0)
    hf = path / "hf"
    tok = AutoTokenizer.from_pretrained(str(bundled_encoder()))
    BertModel(
        BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    ).save_pretrained(hf)
    tok.save_pretrained(hf)
    word = models.Transformer(str(hf), max_seq_length=32)
    st = SentenceTransformer(modules=[word, models.Pooling(32, "mean"), models.Normalize()], device="cpu")
    st.save(str(path / "st"))
    return path / "st"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


def write_dataset(root: Path, splits: dict[str, list[dict]], fmt: str = "contrastgen.negatives/1") -> Path:
    """A minimal dataset folder in the contrastgen layout (shards + manifest) from literal rows."""
    import json

    import pyarrow as pa

    from pipeline.shards.writer import sha256_file, write_atomic

    (root / "data").mkdir(parents=True, exist_ok=True)
    shards = []
    for split, rows in splits.items():
        path = root / "data" / f"{split}-00000-of-00001.arrow"
        empty = pa.table(
            {c: pa.array([], pa.string()) for c in ("caption", "positive", "negative", "neg_type", "source_id")}
        )
        write_atomic(path, pa.Table.from_pylist(rows) if rows else empty)
        shards.append(
            {
                "path": f"data/{split}-00000-of-00001.arrow",
                "split": split,
                "rows": len(rows),
                "sha256": sha256_file(path),
                "num_bytes": path.stat().st_size,
            }
        )
    (root / "manifest.json").write_text(json.dumps({"format": fmt, "shards": shards}))
    return root


def row(
    caption: str, positive: str | None, negative: str, neg_type: str, source_id: str, weight: float | None = None
) -> dict:
    return {
        "caption": caption,
        "positive": positive,
        "negative": negative,
        "neg_type": neg_type,
        "source_id": source_id,
        "weight": weight,
    }
