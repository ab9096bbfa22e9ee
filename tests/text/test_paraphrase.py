"""Paraphrase candidates (issue 32): several samples, the content check on a real spaCy parse, the least
surface-similar valid one first; failed samples are `candidate` rejections with reasons; the filter stage keeps
the first candidate inside the positive's band and embedding floor."""

from __future__ import annotations

from pipeline.config import load_config
from pipeline.kinds import negatives as task
from pipeline.records import CaptionRecord
from pipeline.text.paraphrase import by_wording, content_failure
from pipeline.text.word_class import parse_captions
from tests.kinds.test_negatives import _raw

CAPTION = "A dog runs on the beach."


def test_the_content_check_sees_a_lost_or_added_noun_and_a_changed_number_but_not_a_synonym():
    docs = parse_captions(
        [
            CAPTION,
            "A puppy sprints along the shore.",
            "A dog runs.",
            "A dog runs on the beach with a ball.",
            "Two men play chess.",
            "Three men play chess.",
        ]
    )
    assert content_failure(docs[CAPTION], docs["A puppy sprints along the shore."]) == ""
    assert "lost" in content_failure(docs[CAPTION], docs["A dog runs."])
    assert "added" in content_failure(docs[CAPTION], docs["A dog runs on the beach with a ball."])
    assert "numbers changed" in content_failure(docs["Two men play chess."], docs["Three men play chess."])


def test_by_wording_puts_the_least_similar_first_and_keeps_sample_order_on_ties():
    assert by_wording(
        CAPTION,
        ["A dog is running on the beach.", "A puppy sprints along the shore.", "A dog is running on the beach."],
    ) == [1, 0, 2]
    assert by_wording(CAPTION, []) == []


def test_several_samples_make_a_positive_and_its_alternatives_and_failures_are_candidate_rejections():
    cfg = load_config(None, {"negatives": {"types": ["swap_obj"], "paraphrase_candidates": 4}})
    tpls = task.templates_for(cfg)
    units = task.plan_units([CaptionRecord("2", CAPTION)], cfg, tpls)
    para = next(u for u in units if u.task == "paraphrase")
    assert task.render(para, tpls["paraphrase"], "rewrite", cfg).sampling.n == 4
    plain = load_config(None, {"negatives": {"types": ["swap_obj"]}})
    assert para.key != next(
        u.key for u in task.plan_units([CaptionRecord("2", CAPTION)], plain, tpls) if u.task == "paraphrase"
    )
    swap = next(u for u in units if u.task == "swap_obj")
    samples = ["A dog is running on the beach.", "A dog runs.", '  "A puppy sprints along the shore."\n', CAPTION]
    first = task.assemble([_raw(swap, ["dog <-> beach"]), _raw(para, samples, "rewrite")], tpls)  # sampling.n samples
    assert [(r.positive, r.positive_alternatives) for r in first[0]] == [(samples[0], ())] and not first[1]
    rows, rejects = task.assemble(
        [_raw(swap, ["dog <-> beach"]), _raw(para, samples, "rewrite")], tpls, candidates=True
    )
    assert [(r.positive, r.positive_alternatives) for r in rows] == [
        (
            "A puppy sprints along the shore",  # as parsed
            ("A dog is running on the beach.",),
        )
    ]
    assert sorted((r.stage, r.reason) for r in rejects) == [
        ("candidate", "content_changed"),
        ("candidate", "copy_of_input"),
    ]
    assert all(r.task == "paraphrase" and r.unit_key == para.key and "of 4" in r.detail for r in rejects)
    assert (
        task.KIND.assemble(type("C", (), {"templates": tpls, "cfg": cfg})(), [_raw(para, samples, "rewrite")]).stats
        == 1
    )
    none_valid, rejected = task.assemble(
        [_raw(swap, ["dog <-> beach"]), _raw(para, ["A dog runs.", CAPTION], "rewrite")], tpls, candidates=True
    )
    assert none_valid[0].positive is None and [(r.stage, r.reason) for r in rejected] == [
        ("generation", "content_changed")
    ]


def test_the_filter_stage_keeps_the_first_candidate_inside_the_band_and_the_floor(text_scorers):
    from pipeline.filters.stage import run_stage
    from tests.filters.test_stage import ROWS, config, pairs

    p = pairs()
    alts = {
        "g2": ("Two men play football in a park!", "A pair of men are playing soccer on a field."),
        "g3": ("A bus is moving along a crowded road.",),
    }
    p = type(p)(**{**p.__dict__, "alternatives": [alts.get(r[0], ()) for r in ROWS]})
    res = run_stage(p, config(blind={"enabled": False}, surface={"positive": {"high": 0.95}}), text_scorers)
    assert res.positive_choice == {"g2": 2, "g3": 1}  # g2's first alternative is as close to a copy as its positive
    assert not {"g2", "g3"} & res.positive_drops.keys()
    assert [(f.filter, f.rows_in, f.rows_out) for f in res.funnel][0] == ("positives", 3, 3)
