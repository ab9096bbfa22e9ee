"""Semantic filter: the mine_hard_negatives-style rules on known scores, and the on-disk cache with the
real all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.filters.cache import TextCache
from pipeline.filters.semantic import cosine_rows, semantic_reasons


def test_rules_in_order_with_reasons():
    s_neg = np.array([0.96, 0.85, 0.10, 0.72, 0.69, 0.50])
    s_pos = np.array([0.90, 0.90, 0.90, 0.75, 0.74, np.nan])
    r = semantic_reasons(
        s_neg, s_pos, false_negative=0.95, max_score=0.8, min_score=0.2, absolute_margin=0.04, relative_margin=0.1
    )
    # 0.72 > 0.75 - 0.04; 0.69 <= 0.74 - 0.04 but > 0.74 - 0.074; without a positive the margins pass
    assert r.tolist() == [
        "false_negative",
        "above_max_score",
        "below_min_score",
        "absolute_margin",
        "relative_margin",
        "",
    ]
    assert semantic_reasons(s_neg, s_pos, false_negative=None).tolist() == [""] * 6


@pytest.fixture(scope="module")
def minilm():
    from sentence_transformers import SentenceTransformer

    from pipeline.train.config import bundled_encoder

    return SentenceTransformer(str(bundled_encoder()), device="cpu")


@pytest.mark.integration
def test_cache_computes_each_text_once_and_survives_a_restart(tmp_path, minilm):
    texts = ["a dog on a sofa", "a sofa on a dog", "a dog on a sofa", "two red buses"]
    calls = []

    def encode(batch):
        calls.append(list(batch))
        return minilm.encode(batch, normalize_embeddings=True)

    cache = TextCache(tmp_path, encode, "all-MiniLM-L6-v2")
    first = cache.get(texts)
    assert first.shape == (4, 384) and cache.misses == 3  # the repeated text is encoded once
    np.testing.assert_allclose(first[0], first[2])
    assert calls == [["a dog on a sofa", "a sofa on a dog", "two red buses"]]
    again = TextCache(tmp_path, encode, "all-MiniLM-L6-v2")  # a new process reads the parts
    np.testing.assert_allclose(again.get(texts), first, atol=1e-6)
    assert again.misses == 0 and len(calls) == 1  # the model is not called at all
    other = TextCache(tmp_path, encode, "another-model")  # another model never reads these vectors
    other.get(texts[:1])
    assert other.misses == 1
    sims = cosine_rows(first[[0, 0]], first[[1, 3]])
    assert sims[0] > sims[1]  # the swap stays closer in meaning than an unrelated caption
