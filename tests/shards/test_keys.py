"""The digest index of finished units: lookups across merges, the first file of a key wins, as a property
against a plain dict."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.shards.keys import FileIndex


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 40), max_size=8), st.booleans()), max_size=12))
def test_file_index_finds_the_first_file_of_each_key_across_merges(files):
    """Files of keys added one by one, a lookup (which merges what was added) after some of them: every key is
    found in the first file that held it, whatever the merges in between."""
    index, first = FileIndex(), {}
    for n, (keys, look) in enumerate(files):
        index.add(Path(f"f{n}"), [f"k{k}" for k in keys])
        for k in keys:
            first.setdefault(f"k{k}", Path(f"f{n}"))
        if look:
            index.done(["k0"])
    probe = [f"k{k}" for k in range(45)]
    assert index.done(probe).tolist() == [k in first for k in probe]
    for k in probe:
        assert index.files_of([k]) == ([first[k]] if k in first else [])
