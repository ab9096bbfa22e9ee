"""`contrastgen filter` compares the generation settings of DIR's manifest with today's: a setting added to the
config after DIR was made is not a change (DIR ran at its default), a changed value is."""

from __future__ import annotations

from pipeline.run.refilter import _same


def test_a_setting_added_later_is_not_a_change_but_a_changed_value_is():
    saved = {"path": "in.jsonl", "caption_column": "caption", "openai": {"base_url": "u"}}
    now = {**saved, "passage_column": "passage", "openai": {"base_url": "u", "api_key_env": "OPENAI_API_KEY"}}
    assert _same(saved, now)
    assert not _same(saved, {**now, "caption_column": "text"})
    assert not _same(saved, {**now, "openai": {"base_url": "other"}})
    assert not _same({**saved, "gone": 1}, now)  # a setting DIR had that today's config lacks
    assert _same(0.7, 0.7) and not _same(0.7, 1.0)
