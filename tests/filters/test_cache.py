"""The per-text score cache: chunks committed as they finish, and only the texts asked for read back."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.filters.cache import TextCache


def _length(texts):
    return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


def test_a_crash_keeps_every_finished_chunk_and_a_rerun_reads_only_what_it_asks(tmp_path):
    texts = [f"text number {i}" for i in range(7)]
    calls = []

    def dies_on_third_chunk(batch):
        calls.append(len(batch))
        if len(calls) == 3:
            raise RuntimeError("killed")
        return _length(batch)

    with pytest.raises(RuntimeError, match="killed"):
        TextCache(tmp_path, dies_on_third_chunk, "len", chunk=2).get(texts)
    assert len(list(tmp_path.glob("*/part-*.arrow"))) == 2  # the two finished chunks are on disk

    again = TextCache(tmp_path, _length, "len", chunk=2)
    np.testing.assert_array_equal(again.get(texts), _length(texts))
    assert again.misses == 3  # the 4 texts of the finished chunks were not encoded again

    small = TextCache(tmp_path, _length, "len")
    np.testing.assert_array_equal(small.get(texts[:1]), _length(texts[:1]))
    assert small.misses == 0 and len(small._row) == 1  # one text asked, one vector held (not every text cached)


@pytest.mark.integration
def test_scores_on_ray_data_workers_equal_the_drivers_and_are_cached(ray_session, text_scorers, tmp_path):
    """ray.scorers: texts not cached are scored in chunks on Ray Data actors (the real MiniLM and SmolLM2 loaded in
    each), each chunk cached as it comes back. The vectors equal the driver's; a second scorer computes nothing."""
    from pipeline.config import FilterConfig
    from pipeline.filters.scorers import TextScorers

    texts = [
        f"A {c} dog runs past {n} red cars near the old harbour."
        for c in ("brown", "black", "white")
        for n in ("two", "three", "four", "five")
    ] + ["A cat."]
    remote = TextScorers(FilterConfig(), text_scorers.lm_path, cache_root=tmp_path, workers=2)
    remote.embeddings.chunk = remote.loglik.chunk = 4  # 13 texts: 4 chunks, so both workers get some
    vectors, logliks = remote.embed(texts), remote.lm(texts)
    assert remote.embeddings.misses == remote.loglik.misses == len(texts)
    assert len(list(remote.embeddings.dir.glob("part-*.arrow"))) == 4
    np.testing.assert_allclose(vectors, text_scorers.embed(texts), atol=2e-5)
    np.testing.assert_allclose(logliks, text_scorers.lm(texts), atol=2e-4)
    again = TextScorers(FilterConfig(), text_scorers.lm_path, cache_root=tmp_path, workers=2)
    np.testing.assert_array_equal(again.embed(texts), vectors)
    assert again.embeddings.misses == 0
