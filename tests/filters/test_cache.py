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
