"""The retrieval kind's logic on hand-made completions: query validation, split-aligned query ids, templates and
config, units, the assembly of judge, round trip, mining and false-negative judge (with the real bundled MiniLM:
mining needs real embeddings, so those tests are marked integration), and the training layout."""

from __future__ import annotations

import pytest

from pipeline.config import RunConfig, load_config
from pipeline.errors import ConfigError, TemplateError
from pipeline.kinds import KINDS
from pipeline.kinds import retrieval as task
from pipeline.kinds.base import Context, Inputs, Stage, merge_stats
from pipeline.records import PassageRecord, Provenance, RawResult, Rejection
from pipeline.shards.publish import split_of
from pipeline.text.edits import Failure
from pipeline.text.queries import check_query, copied_share

KIND = KINDS["retrieval"]
PASSAGE = (
    "Mars looks red because its surface is covered in iron oxide dust. A day on Mars lasts about 24 hours and 37 "
    "minutes."
)


@pytest.mark.parametrize(
    "qtype, text, finish, expected",
    [
        ("question", "Why does Mars look red?", "stop", "Why does Mars look red?"),
        ("question", '"How long is a day on Mars?"', "stop", "How long is a day on Mars?"),  # quotes are not the query
        ("keyword", "mars red color cause", "stop", "mars red color cause"),
        (
            "claim",
            "The red color of Mars comes from rusty dust.",
            "stop",
            "The red color of Mars comes from rusty dust.",
        ),
        ("question", "Question: why is Mars red?", "stop", "chatter"),
        ("keyword", "Search query: mars dust", "stop", "chatter"),
        ("question", "Here is a question: why is Mars red?", "stop", "chatter"),
        ("question", "I'm sorry, I cannot help with that.", "stop", "refusal"),
        ("question", "Why is Mars red?\nWhy is it dusty?", "stop", "multi_line"),
        ("question", "Why is Mars", "length", "truncated"),
        ("claim", "Mars looks red because its surface is covered in iron oxide dust.", "stop", "copy_of_passage"),
        ("claim", PASSAGE, "stop", "copy_of_passage"),
        ("question", "Mars is red.", "stop", "type_mismatch"),  # a question must end with '?'
        ("question", "Mars is red. Why is it red?", "stop", "type_mismatch"),  # one question, not two sentences
        ("keyword", "why does the planet mars look so red to us?", "stop", "type_mismatch"),
        ("claim", "Is Mars red?", "stop", "type_mismatch"),
        ("claim", " ".join(["word"] * 40) + ".", "stop", "too_long"),
    ],
)
def test_queries_are_validated_strictly(qtype, text, finish, expected):
    out = check_query(text, finish, PASSAGE, qtype, 32)
    if isinstance(out, Failure):
        assert out.reason == expected, out
    else:
        assert out == expected


def test_copied_share_is_the_longest_verbatim_run():
    assert copied_share("iron oxide dust covers Mars", PASSAGE) == pytest.approx(3 / 5)
    assert copied_share("a day on mars lasts about 24 hours", PASSAGE) == 1.0
    assert copied_share("volcano", PASSAGE) == 0.0


def raw(
    source_id: str, t: str, texts: list[str], source: str = PASSAGE, key: str | None = None, model: str = "m"
) -> RawResult:
    prov = Provenance("embedded", model, "sha", t, 0.7, 0.95, 40, 7, 10, 5, 0.1)
    return RawResult(
        key or f"{source_id}-{t}", source_id, source, None, t, tuple(texts), ("stop",) * len(texts), prov, "0"
    )


def test_first_valid_sample_wins_and_a_rejection_names_the_first_failure():
    p = PassageRecord("p1", PASSAGE)
    q = task.parse_query(raw("p1", "question", ["Sure! Why is Mars red?", "Why is Mars red?"]), p, RunConfig())
    assert isinstance(q, task.Query) and (q.text, q.type, q.passage) == ("Why is Mars red?", "question", p)
    bad = task.parse_query(raw("p1", "question", ["Sure! Why is Mars red?", "Mars."]), p, RunConfig())
    assert isinstance(bad, Rejection) and (bad.reason, bad.task, bad.source_id, bad.stage) == (
        "chatter",
        "question",
        "p1",
        "generation",
    )


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5])
def test_query_ids_fall_in_their_passages_split(fraction):
    ids = [f"p{i}" for i in range(300)]
    for pid in ids:
        for t in ("keyword", "question", "claim"):
            qid = task.query_id(pid, t, fraction)
            assert qid.startswith(f"{pid}/{t}") and split_of(qid, fraction) == split_of(pid, fraction)
            assert task.query_id(pid, t, fraction) == qid  # deterministic
    salted = sum("#" in task.query_id(p, "question", fraction) for p in ids)
    assert (salted == 0) if fraction == 0.0 else (salted > 0)  # a salt only where the plain id lands wrong


def test_templates_config_and_flags(tmp_path):
    cfg = RunConfig()
    assert sorted(task.templates_for(cfg)) == ["claim", "judge", "keyword", "question"]
    bad = tmp_path / "prompts"
    bad.mkdir()
    for name in ("keyword", "judge"):
        (bad / f"{name}.yaml").write_text(
            (cfg.retrieval.prompts_dir / f"{name}.yaml").read_text().replace("task: query", "task: judge")
        )
    with pytest.raises(TemplateError, match="keyword.yaml: field 'task' says 'judge', expected 'query'"):
        task.templates_for(load_config(None, {"retrieval": {"prompts_dir": bad, "types": ["keyword"]}}))
    with pytest.raises(ConfigError, match="retrieval.types"):
        load_config(None, {"retrieval": {"types": ["summary"]}})
    with pytest.raises(ConfigError, match="at least one query type"):
        load_config(None, {"retrieval": {"types": []}})
    from pipeline.cli import _overrides, _parser

    a = _parser().parse_args(
        ["generate", "retrieval", "--input", "x.jsonl", "--out", "o", "--types", "question", "--fn-judge"]
    )
    over = load_config(None, _overrides(a)).retrieval
    assert [t.value for t in over.types] == ["question"] and over.fn_judge.enabled and over.fn_judge.top == 4
    assert KIND.stages(load_config(None, _overrides(a))) == ("query", "judge", "fn_judge") and KIND.stages(cfg) == (
        "query",
        "judge",
    )


def test_units_render_their_template_and_the_judge_is_greedy_with_score_choices():
    cfg = load_config(None, {"retrieval": {"types": ["keyword", "question"]}})
    tpls = task.templates_for(cfg)
    passages = [PassageRecord("p1", PASSAGE), PassageRecord("p2", "Bread rises because yeast makes gas.")]
    units = task.query_units(passages, cfg, tpls)
    assert [(u.source.id, u.task) for u in units] == [
        ("p1", "keyword"),
        ("p1", "question"),
        ("p2", "keyword"),
        ("p2", "question"),
    ]
    assert len({u.key for u in units}) == 4 and all(u.prompt_sha == tpls[u.task].sha256 for u in units)
    ctx = Context(cfg, tpls, Inputs(passages, [], 2), raws=lambda name: [])
    req = KIND.render(units[1], ctx)
    assert req.messages[-1] == ("user", f"Passage: {PASSAGE}\nQuestion:") and req.sampling.n == cfg.sampling.n
    item = task.Judged("p1/question", "Why is Mars red?", "question", "p1", PASSAGE)
    (judge,) = task.judge_units([item], task.JUDGE, cfg, tpls)
    jr = KIND.render(judge, ctx)
    assert jr.messages[-1] == ("user", f"Query: Why is Mars red?\nPassage: {PASSAGE}\nScore (0-5):")
    assert (jr.sampling.temperature, jr.sampling.n, jr.sampling.choices) == (0.0, 1, tuple("012345"))
    (fn,) = task.judge_units([item], task.FN_JUDGE, cfg, tpls)
    assert fn.key != judge.key and fn.task == "fn_judge"  # same pair, another stage: another unit


def test_rows_in_the_training_layout_and_stats_add_up():
    rows = [
        task.RetrievalRow(
            "r1",
            "why is mars red?",
            PASSAGE,
            "Bread rises.",
            "question",
            0.7,
            0.1,
            1,
            4,
            None,
            "p1/question",
            "p1",
            "p2",
            "m",
            Provenance("embedded", "m", "sha", "question", 0.7, 0.95, 40, 7, 10, 5, 0.1),
        )
    ]
    table = KIND.as_training(KIND.table(rows))
    assert table.column_names == ["anchor", "positive", "negative", "type", "source_id", "weight"]
    assert table["anchor"].to_pylist() == ["why is mars red?"] and table["type"].to_pylist() == ["question"]
    assert table["source_id"].to_pylist() == ["p1/question"]
    a = task.Stats(rows=2, pos_sim_sum=1.2, neg_sim_sum=0.4, judge_score_sum=8, with_rows={"question": 1})
    b = task.Stats(rows=1, pos_sim_sum=0.6, neg_sim_sum=0.5, judge_score_sum=1, with_rows={"question": 1, "keyword": 1})
    m = merge_stats(a, b).means()
    assert (m["rows"], m["pos_sim_mean"], m["neg_sim_mean"], m["judge_score_mean"]) == (3, 0.6, 0.3, 3.0)
    assert m["with_rows"] == {"question": 2, "keyword": 1}


# Mining needs real embeddings (the bundled MiniLM); the passages make the outcome certain, not a matter of the model:
# p2 is p1's text (a duplicate: as close as the positive), the violin question is about p4, not p5.
PASSAGES = [
    ("p1", "The Moon takes about 27 days to orbit the Earth, and the same side of it always faces us."),
    ("p2", "The Moon takes about 27 days to orbit the Earth, and the same side of it always faces us."),
    ("p3", "Bread rises because yeast ferments sugar in the dough and releases carbon dioxide gas."),
    ("p4", "A violin has four strings tuned in fifths, and players draw a bow of horsehair across them."),
    ("p5", "Honeybees show each other where flowers are with a waggle dance."),
    ("p6", "Thunder is the sound of air expanding as lightning heats it."),
]
QUERIES = {
    ("p1", "question"): "How long does the Moon take to orbit the Earth?",
    ("p3", "question"): "Why does bread dough rise?",
    ("p3", "keyword"): "bread yeast gas",
    ("p4", "question"): "How many strings does a violin have?",
    ("p4", "keyword"): "Keywords: violin strings",
    ("p5", "question"): "How are the strings of a violin tuned?",
}
JUDGE = {
    "How long does the Moon take to orbit the Earth?": "4",
    "Why does bread dough rise?": "5",
    "bread yeast gas": "0",
    "How many strings does a violin have?": "none",
    "How are the strings of a violin tuned?": "3",
}


def run_assemble(tmp_path, fn_answer, test_fraction: float = 0.0) -> tuple[RunConfig, Context, object]:
    cfg = load_config(
        None,
        {
            "output": {"test_fraction": test_fraction},
            "retrieval": {
                "types": ["keyword", "question"],
                "mining": {"num_negatives": 2},
                "fn_judge": {"enabled": True, "top": 1},
            },
            "filters": {"retrieval": {"semantic": {"cache_dir": tmp_path / "cache"}}},
        },
    )
    passages = [PassageRecord(i, t) for i, t in PASSAGES]
    store: dict[str, list[RawResult]] = {}
    ctx = Context(cfg, KIND.templates(cfg), Inputs(passages, [], len(passages)), raws=lambda name: store[name])

    def answer(u):
        if u.task == "judge":
            return JUDGE[u.source.query]
        if u.task == "fn_judge":
            return fn_answer(u.source)
        return QUERIES.get((u.source.id, u.task), "I'm sorry, I cannot do that.")

    for stage in KIND.stages(cfg):
        units = KIND.units(stage, ctx)
        ctx.stages[stage] = Stage(frozenset(u.key for u in units), units, [], 0)
        store[stage] = [raw(u.source.id, u.task, [answer(u)], u.source.text, u.key) for u in units]
    return cfg, ctx, KIND.assemble(ctx, [r for rs in store.values() for r in rs])


@pytest.mark.integration
def test_assemble_applies_judge_round_trip_mining_and_the_false_negative_judge(tmp_path):
    judged: list = []

    def fn_answer(item):  # the bread query's closest candidate "answers" it: a false negative
        judged.append((item.id, item.passage_id))
        return "4" if item.query.startswith("Why does bread") else "1"

    cfg, ctx, a = run_assemble(tmp_path, fn_answer)
    reasons = sorted((r.reason, r.task, r.stage, r.filter) for r in a.rejects)
    assert ("not_answerable", "keyword", "generation", None) in reasons  # judge 0 < min_score 1
    assert ("chatter", "keyword", "generation", None) in reasons and (
        "refusal",
        "question",
        "generation",
        None,
    ) in reasons
    assert ("unparsable_score", "question", "generation", None) in reasons
    rt = [r for r in a.rejects if r.reason == "round_trip"]
    assert [(r.source_id.split("/")[0], r.score > 1) for r in rt] == [
        ("p5", True)
    ]  # the violin question ranks p4 first
    dup = [r for r in a.rejects if r.reason == "positive_aware"]
    assert [(r.source_id.split("/")[0], r.filter, r.task, r.raw) for r in dup] == [
        ("p1", "mining", "mine", PASSAGES[1][1])
    ]
    fn = [r for r in a.rejects if r.reason == "false_negative"]
    assert [(r.source_id.split("/")[0], r.filter, r.task, r.score) for r in fn] == [("p3", "fn_judge", "fn_judge", 4.0)]
    assert sorted(judged) == sorted({(i, p) for i, p in judged}) and len(judged) == 2  # top 1 candidate per kept query
    by_query: dict[str, list] = {}
    for r in a.rows:
        by_query.setdefault(r.source_id, []).append(r)
    assert sorted(q.split("/")[0] for q in by_query) == ["p1", "p3"]
    for qid, rows in by_query.items():
        own = qid.split("/")[0]
        assert len(rows) == 2 and all(r.passage_id == own and r.negative_id not in (own, "p2") for r in rows)
        assert all(r.neg_sim <= 0.95 * r.pos_sim and r.judge_score >= 1 for r in rows)
        assert [r.neg_rank for r in rows] == sorted(r.neg_rank for r in rows)
    fn_dropped = fn[0].detail.split()[1]
    assert fn_dropped not in [r.negative_id for r in by_query["p3/question"]]
    assert [r.fn_score for r in by_query["p1/question"]] == [1, None]  # the first was judged (top 1), the second not
    st = a.stats
    assert (st.queries, st.answerable, st.round_trip, st.mining_dropped, st.fn_judged, st.false_negatives, st.rows) == (
        5,
        3,
        2,
        1,
        2,
        1,
        4,
    )
    # determinism: planning and assembling again (a resumed run) gives the same units and rows
    again = run_assemble(tmp_path, fn_answer)
    assert [r.id for r in again[2].rows] == [r.id for r in a.rows]
    assert again[1].stages["fn_judge"].keys == ctx.stages["fn_judge"].keys


@pytest.mark.integration
def test_test_queries_are_exempt_from_the_round_trip(tmp_path):
    """Filtered by the encoder that is then evaluated, a test split would hold only the queries it already answers."""
    cfg, _, a = run_assemble(tmp_path, lambda item: "1", test_fraction=0.99)
    assert all(split_of(p, 0.99) == "test" for p, _ in PASSAGES)  # one pool: every passage is a test passage
    assert not [r for r in a.rejects if r.reason == "round_trip"]
    assert any(
        r.source_id.startswith("p5/question") for r in a.rows
    )  # the violin question of p5 stays, as a test query
