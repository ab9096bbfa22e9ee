"""Sentence-pair task logic on hand-made raw results: candidate parsing, the judge's scores, the keep/swap
rule, variant choice, seed sentences."""

from __future__ import annotations

import pytest

from pipeline.config import RunConfig
from pipeline.kinds import pairs as task
from pipeline.records import Provenance, RawResult, Rejection, SentenceRecord

CFG = RunConfig()
S = SentenceRecord("s1", "A man is playing a guitar on stage.")


def raw(
    sid: str, t: str, texts: list[str], source: str = S.sentence, finish: list[str] | None = None, sha: str = "sha"
) -> RawResult:
    prov = Provenance("embedded", "m", sha, t, 0.7, 0.95, 40, 7, 10, 5, 0.1)
    return RawResult(
        f"{sid}-{t}", sid, source, None, t, tuple(texts), tuple(finish or ["stop"] * len(texts)), prov, "0"
    )


@pytest.mark.parametrize(
    "texts, expected",
    [
        (["A musician performs on a stage."], "A musician performs on a stage."),
        (
            ["Here is a sentence: a man plays.", "A musician performs."],
            "A musician performs.",
        ),  # first valid sample wins
        (["Here is a sentence: a man plays."], ("chatter", "Here is a sentence: a man plays.")),
        (["I'm sorry, I can't do that."], "refusal"),
        (["A man is playing a guitar on stage"], ("copy_of_input", "")),
        (["A man plays.\nAnother line"], "multi_line"),
    ],
)
def test_candidates_are_parsed_strictly(texts, expected):
    out = task.parse_candidate(raw("s1", "entail", texts))
    if isinstance(expected, str) and not isinstance(out, Rejection):
        assert out.text == expected
    else:
        reason = expected if isinstance(expected, str) else expected[0]
        assert isinstance(out, Rejection) and out.reason == reason and out.task == "entail"


def test_judge_scores_and_the_keep_rule():
    assert [task.parse_score(t) for t in ["4", " 2 ", "5/5", "3 out of 5", "0.", "six", "4 because"]] == [
        4,
        2,
        5,
        3,
        0,
        None,
        None,
    ]
    rule = lambda p, n: task.keep_rule(p, n, 3, 3)  # noqa: E731
    assert rule(4, 1) == (True, False, "") and rule(3, 2) == (True, False, "")
    assert rule(1, 5) == (True, True, "")  # the "contradiction" is the closer one: roles swap
    assert rule(2, 2) == (False, False, "judge_tie") and rule(2, 0) == (False, False, "judge_positive_low")
    assert rule(5, 4) == (False, False, "judge_negative_high") and rule(4, 5) == (False, True, "judge_negative_high")


def test_assemble_keeps_swaps_and_rejects_with_reasons():
    tpls = task.templates_for(CFG)
    sha = {n: t.sha256 for n, t in tpls.items()}
    sents = [S, SentenceRecord("s2", "Two kids build a sandcastle."), SentenceRecord("s3", "A dog sleeps.")]
    raws = [
        raw("s1", "entail", ["A musician performs."], sha=sha["entail_rewrite"]),
        raw("s1", "contradict", ["Nobody plays music."], sha=sha["contradict_negate"]),
        raw("s2", "entail", ["Children play in sand."], sents[1].sentence, sha=sha["entail_infer"]),
        raw("s2", "contradict", ["Kids destroy a castle."], sents[1].sentence, sha=sha["contradict_swap"]),
        raw("s3", "entail", ["Here is one: a dog naps."], sents[2].sentence, sha=sha["entail_rewrite"]),
        raw("s3", "contradict", ["A dog runs."], sents[2].sentence, sha=sha["contradict_swap"]),
    ]
    cands, rejects = task.candidates(raws, tpls)
    assert set(cands) == {
        ("s1", "entail"),
        ("s1", "contradict"),
        ("s2", "entail"),
        ("s2", "contradict"),
        ("s3", "contradict"),
    }
    assert [r.reason for r in rejects] == ["chatter"]
    items = task.judge_items(sents, cands)
    assert [(i.id, i.role) for i in items] == [
        ("s1", "entail"),
        ("s1", "contradict"),
        ("s2", "entail"),
        ("s2", "contradict"),
    ]
    judged = {("s1", "entail"): "4", ("s1", "contradict"): "1", ("s2", "entail"): "1", ("s2", "contradict"): "4"}
    scores = {k: (v, raw(k[0], "judge", [v])) for k, v in judged.items()}
    rows, rejects, st = task.assemble(sents, cands, scores, CFG)
    assert [(r.source_id, r.positive, r.negative, r.swapped, r.pos_score, r.neg_score) for r in rows] == [
        ("s1", "A musician performs.", "Nobody plays music.", False, 4, 1),
        ("s2", "Kids destroy a castle.", "Children play in sand.", True, 4, 1),
    ]
    assert (rows[0].pos_instruction, rows[0].neg_instruction) == ("entail_rewrite", "contradict_negate")
    assert [r.reason for r in rejects] == ["no_partner"] and (st.judged, st.swapped) == (2, 1)


def test_variants_are_picked_per_row_and_units_render_their_variant():
    tpls = task.templates_for(CFG)
    sents = [SentenceRecord(f"s{i}", f"Sentence number {i}.") for i in range(40)]
    picked = {task.variant_of(s.id, "entail", CFG) for s in sents}
    assert picked == set(CFG.pairs.entail)  # both variants in use
    units = task.generation_units(sents[:2], CFG, tpls)
    assert [u.task for u in units] == ["entail", "contradict"] * 2
    for u in units:
        assert u.prompt_sha == tpls[task.variant_of(u.source.id, u.task, CFG)].sha256
        req = task.render(u, CFG, tpls)
        assert req.messages[-1][1].count(u.source.sentence) == 1 and req.sampling.stop_at_newline


def test_seed_sentences_dedup_and_keep_valid_samples():
    r = raw(
        "t1",
        "seed",
        ["A cat sleeps on a sofa.", "a cat sleeps on a sofa.", "Sure! Here is one.", "A boy reads a book."],
        source="home",
    )
    sents, rejects = task.seed_sentences([r])
    assert [s.sentence for s in sents] == ["A cat sleeps on a sofa.", "A boy reads a book."]
    assert sorted((x.reason, x.seed) for x in rejects) == [("chatter", 9), ("duplicate_seed", 8)]
