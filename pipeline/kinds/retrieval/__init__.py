"""Retrieval triplets: synthetic queries for a user's passages (InPars: Bonifacio et al. 2022, arXiv:2202.05144;
Promptagator: Dai et al. 2022, arXiv:2209.11755) with hard negatives mined from the same corpus and checked to be
really negative (NV-Retriever: Moreira et al. 2024, arXiv:2407.15831; sentence-transformers' ``mine_hard_negatives``).

Task contract, two or three stages, each a set of units in the same resumable store:
- ``query``: inputs the passages (:class:`PassageRecord`); one unit per passage and
  query type (``prompts/retrieval/<type>.yaml``), the first valid sample wins (:func:`parse_query`: refusals,
  chatter, multi-line, truncated, too long, a copy of the passage, the wrong shape for the type are rejected).
- ``judge``: inputs :class:`Judged` (a query and its passage); the model rates 0-5 how well the passage answers
  the query, greedy; a query is kept at >= ``judge.min_score`` (else ``not_answerable``).
- mining, no LLM (:mod:`pipeline.text.mining`): the kept queries and the block's passages embedded (cached per
  text), candidates by cosine among the passages of the query's split, the positive-aware rules; a training query
  whose own passage ranks below ``mining.round_trip`` in that pool is rejected (``round_trip``, Promptagator's
  filter). Test queries are exempt: a filter by the encoder that is then evaluated would keep exactly the queries it
  already answers (recall@1 of the base model 100 by construction).
- ``fn_judge`` (``fn_judge.enabled``): the same judge rates the closest ``fn_judge.top`` surviving candidates
  against the query; one scoring >= ``fn_judge.max_score`` is a ``false_negative``.
Rows: one per (query, negative), the query's id as ``source_id``: the trainer's group is one query.

Mining sees one block (``output.block_sources`` passages): its corpus is the block, so memory stays bounded by a
block at any corpus size; with ``block_sources`` above the number of passages it is the whole corpus. A query's
id is chosen so that it falls in its passage's split (:func:`query_id`), and it mines only passages of that
split: no test passage is ever a training positive or negative.

Why one module of about 570 lines: it is the kind's logic, read top to bottom as its pipeline (query, judge, mining,
false-negative judge, assembly); each piece is small and reads the ones above it. Its row, schema and settings are in
:mod:`pipeline.kinds.retrieval.schema`, the mining rules in :mod:`pipeline.text.mining`."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.filters.config import FilterConfig, FilterName, SemanticSection
from pipeline.filters.scorers import TextScorers
from pipeline.inputs import read_passages
from pipeline.kinds.base import (
    Assembled,
    CardFacts,
    Context,
    Flag,
    Inputs,
    Tally,
    TypeStats,
    check_input_output,
    pick_samples,
    row_id,
    training_layout,
    unit_key,
    unit_seed,
)
from pipeline.kinds.retrieval.schema import FILTER_DEFAULTS, SCHEMA, RetrievalConfig, RetrievalRow
from pipeline.records import (
    GenerationRequest,
    PassageRecord,
    RawResult,
    Reason,
    Rejection,
    RejectStage,
    Sampling,
    Unit,
)
from pipeline.settings import BaseRunConfig as RunConfig
from pipeline.shards.card import finite
from pipeline.shards.publish import split_of
from pipeline.shards.schema import rows_table
from pipeline.text.edits import Failure
from pipeline.text.mining import Mined, mine, select
from pipeline.text.queries import QueryType, check_query
from pipeline.text.scores import SCORES, parse_score
from pipeline.text.templates import Template, load_template


def settings(cfg: RunConfig) -> RetrievalConfig:
    """This kind's section of the run config (``retrieval:``)."""
    return cfg.section(RetrievalConfig)


QUERY, JUDGE, FN_JUDGE, MINE = "query", "judge", "fn_judge", "mine"  # stages (query: one task per type), reject tasks


def query_id(passage_id: str, query_type: str, test_fraction: float) -> str:
    """The query's id (its rows' ``source_id``): ``<passage id>/<type>``, salted (``#n``, the first n that works)
    so that it hashes into its passage's split (:func:`split_of`): a passage's queries are all train or all test."""
    want = split_of(passage_id, test_fraction)
    for salt in itertools.count():
        qid = f"{passage_id}/{query_type}" + (f"#{salt}" if salt else "")
        if split_of(qid, test_fraction) == want:
            return qid
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class Judged:
    """One (query, passage) pair the judge rates: the query's own passage (``judge``) or a candidate (``fn_judge``)."""

    id: str  # the query's id
    query: str
    query_type: str
    passage_id: str
    passage: str

    @property
    def text(self) -> str:
        """The source text a unit's raw result records (``RawResult.source_text``)."""
        return self.query


@dataclass(frozen=True)
class Query:
    id: str
    text: str
    type: str
    passage: PassageRecord
    raw: RawResult


def templates_for(cfg: RunConfig) -> dict[str, Template]:
    """One template per configured query type, plus the judge, by name; each checked for its task."""
    r = settings(cfg)
    out = {}
    for name, task, slots in [(t.value, QUERY, ("passage",)) for t in r.types] + [(JUDGE, JUDGE, ("query", "passage"))]:
        out[name] = load_template(r.prompts_dir / f"{name}.yaml", slots, task=task)
    return out


def sampling_of(task: str, seed: int, cfg: RunConfig) -> Sampling:
    s, j = cfg.sampling, settings(cfg).judge
    if task in (JUDGE, FN_JUDGE):
        return Sampling(j.temperature, 1.0, j.max_tokens, 1, seed, choices=SCORES)
    return Sampling(s.temperature, s.top_p, s.max_tokens, s.n, seed)


def query_units(passages: list[PassageRecord], cfg: RunConfig, templates: dict[str, Template]) -> list[Unit]:
    units = []
    for p in passages:
        for t in (t.value for t in settings(cfg).types):
            tpl = templates[t]
            units.append(
                Unit(
                    unit_key([p.id, p.passage], t, tpl.sha256, sampling_of(t, 0, cfg), cfg),
                    p,
                    t,
                    tpl.sha256,
                    unit_seed(cfg.sampling.seed, p.id, t),
                )
            )
    return units


def judge_units(items: list[Judged], task: str, cfg: RunConfig, templates: dict[str, Template]) -> list[Unit]:
    tpl = templates[JUDGE]
    return [
        Unit(
            unit_key([it.id, it.query, it.passage_id, it.passage], task, tpl.sha256, sampling_of(task, 0, cfg), cfg),
            it,
            task,
            tpl.sha256,
            unit_seed(cfg.sampling.seed, it.id, it.passage_id, task),
        )
        for it in items
    ]


def _rejection(
    raw: RawResult | None, reason: Reason, detail: str, text: str, source_id: str, task: str, **kw
) -> Rejection:
    p = raw.provenance if raw is not None else None
    return Rejection(
        stage=kw.pop("stage", RejectStage.generation),
        reason=reason,
        detail=detail,
        raw=text,
        source_id=source_id,
        task=task,
        unit_key=raw.unit_key if raw else None,
        prompt_sha=p.prompt_sha if p else None,
        model=p.model if p else None,
        seed=p.seed if p else None,
        **kw,
    )


def parse_query(raw: RawResult, passage: PassageRecord, cfg: RunConfig) -> Query | Rejection:
    """The first valid sample as the query (:func:`check_query`); else a rejection with the first sample's reason."""
    first: Failure | None = None
    for text, finish in zip(raw.texts, raw.finish_reasons, strict=True):
        q = check_query(text, finish, passage.passage, raw.task, settings(cfg).max_query_words)
        if isinstance(q, str):
            return Query(query_id(passage.id, raw.task, cfg.output.test_fraction), q, raw.task, passage, raw)
        first = first or q
    first = first or Failure(Reason.empty)
    return _rejection(raw, first.reason, first.detail, " ||| ".join(raw.texts), raw.source_id, raw.task)


@dataclass
class Stats:
    passages: int = 0
    queries: int = 0  # valid queries
    answerable: int = 0  # kept by the judge
    round_trip: int = 0  # ... that passed the round trip (a training query: its passage ranked in the top round_trip)
    candidates: int = 0  # mined candidates looked at (up to each query's last negative)
    mining_dropped: int = 0  # by the mining rules
    fn_judged: int = 0  # candidates the false-negative judge rated
    false_negatives: int = 0  # dropped by it (score at or above fn_judge.max_score, or no score)
    no_negative: int = 0  # answerable queries left without a negative
    rows: int = 0  # rows assembled (before the filter stage)
    pos_sim_sum: float = 0.0  # over those rows (sums: blocks add up)
    neg_sim_sum: float = 0.0
    judge_score_sum: int = 0
    with_rows: dict = field(default_factory=dict)  # query type -> queries that made rows

    def means(self) -> dict:
        """The card's and manifest's view: the sums as means over the rows (NaN without rows)."""
        d = asdict(self)
        for name in ("pos_sim", "neg_sim", "judge_score"):
            total = d.pop(f"{name}_sum")
            d[f"{name}_mean"] = round(total / self.rows, 4) if self.rows else float("nan")
        return d


def _scores(ctx: Context, stage: str) -> dict[tuple[str, str], RawResult]:
    """A judge stage's results by (query id, passage id); a unit the engine gave up on has none."""
    if stage not in ctx.stages:
        return {}
    by_key = {r.unit_key: r for r in ctx.raws(stage)}
    return {(u.source.id, u.source.passage_id): by_key[u.key] for u in ctx.stages[stage].units if u.key in by_key}


def queries(ctx: Context) -> tuple[list[Query], list[Rejection]]:
    passages = {p.id: p for p in ctx.inputs.records}
    out: list[Query] = []
    rejects: list[Rejection] = []
    for raw in ctx.raws(QUERY):
        q = parse_query(raw, passages[raw.source_id], ctx.cfg)
        if isinstance(q, Rejection):
            rejects.append(q)
        else:
            out.append(q)
    return out, rejects


def answerable(ctx: Context, qs: list[Query]) -> tuple[list[tuple[Query, int, RawResult]], list[Rejection]]:
    """The queries the judge kept, with their score and its raw result; the others as rejections."""
    scores, kept, rejects, j = _scores(ctx, JUDGE), [], [], settings(ctx.cfg).judge
    for q in qs:
        raw = scores.get((q.id, q.passage.id))
        score = parse_score(raw.texts[0]) if raw else None
        if raw is None:
            rejects.append(
                _rejection(
                    q.raw, Reason.no_score, "the judge of this query failed (see its engine row)", q.text, q.id, q.type
                )
            )
        elif score is None:
            rejects.append(
                _rejection(raw, Reason.unparsable_score, "expected one digit 0-5", raw.texts[0], q.id, q.type)
            )
        elif score < j.min_score:
            rejects.append(
                _rejection(
                    raw,
                    Reason.not_answerable,
                    f"judge {score} < {j.min_score}: {q.passage.passage}",
                    q.text,
                    q.id,
                    q.type,
                    score=float(score),
                )
            )
        else:
            kept.append((q, score, raw))
    return kept, rejects


def encoder(cfg: RunConfig) -> TextScorers:
    """The mining encoder, its vectors cached per text where the filter stage caches them (shared when the same
    model)."""
    semantic = SemanticSection(
        model=settings(cfg).mining.model, cache_dir=cfg.filters_for("retrieval").semantic.cache_dir
    )
    return TextScorers(FilterConfig(semantic=semantic), None)


def mined(ctx: Context, qs: list[Query]) -> list[Mined]:
    """Each query's positive and candidates, mined among the block's passages of its split."""
    passages = ctx.inputs.records
    if not qs:
        return []
    row = {p.id: i for i, p in enumerate(passages)}
    emb = encoder(ctx.cfg).embed([p.passage for p in passages] + [q.text for q in qs])  # [P + Q, D]
    pools = np.array([split_of(p.id, ctx.cfg.output.test_fraction) == "test" for p in passages])
    return mine(
        emb[len(passages) :],
        emb[: len(passages)],
        np.array([row[q.passage.id] for q in qs]),
        pools,
        settings(ctx.cfg).mining,
    )


@dataclass(frozen=True)
class Kept:
    """A query the judge and the round-trip check kept: its judge score and raw result, and its mining."""

    query: Query
    score: int
    judge: RawResult
    mined: Mined


def kept_queries(ctx: Context) -> tuple[list[Kept], list[Rejection], Stats]:
    """The block's valid, answerable queries, round-trip consistent (training queries), mined; the others as
    rejections."""
    qs, rejects = queries(ctx)
    judged, judge_rejects = answerable(ctx, qs)
    k, tf = settings(ctx.cfg).mining.round_trip, ctx.cfg.output.test_fraction
    kept = []
    for (q, score, raw), m in zip(judged, mined(ctx, [q for q, _, _ in judged])):
        if k is not None and m.pos_rank > k and split_of(q.id, tf) == "train":
            judge_rejects.append(
                _rejection(
                    q.raw,
                    Reason.round_trip,
                    f"its passage ranks {m.pos_rank} in its pool (> {k}); cosine {m.pos_sim:.4f}",
                    q.text,
                    q.id,
                    q.type,
                    score=float(m.pos_rank),
                )
            )
        else:
            kept.append(Kept(q, score, raw, m))
    return (
        kept,
        rejects + judge_rejects,
        Stats(passages=len(ctx.inputs.records), queries=len(qs), answerable=len(judged), round_trip=len(kept)),
    )


def fn_items(ctx: Context, kept: list[Kept]) -> list[Judged]:
    """The candidates the false-negative judge rates: each query's closest ``fn_judge.top`` that passed the rules."""
    p, top = ctx.inputs.records, settings(ctx.cfg).fn_judge.top
    return [
        Judged(k.query.id, k.query.text, k.query.type, p[c.passage].id, p[c.passage].passage)
        for k in kept
        for c in [c for c in k.mined.candidates if not c.reason][:top]
    ]


def assemble(ctx: Context) -> Assembled:
    cfg, passages = ctx.cfg, ctx.inputs.records
    kept, rejects, st = kept_queries(ctx)
    fn_on, fn = settings(cfg).fn_judge.enabled, _scores(ctx, FN_JUDGE)
    planned = {(it.id, it.passage_id) for it in fn_items(ctx, kept)} if fn_on else set()
    rows = []
    for k in kept:
        q, m = k.query, k.mined
        fn_scores = {
            c.passage: (parse_score(fn[key].texts[0]) if key in fn else None)
            for c in m.candidates
            if (key := (q.id, passages[c.passage].id)) in planned
        }
        keep, drops = select(
            m.candidates, fn_scores, settings(cfg).mining.num_negatives, settings(cfg).fn_judge.max_score
        )
        st.candidates, st.fn_judged = st.candidates + len(keep) + len(drops), st.fn_judged + len(fn_scores)
        for d in drops:
            neg = passages[d.candidate.passage]
            by_llm = d.reason in (Reason.false_negative, Reason.fn_no_score)
            st.mining_dropped, st.false_negatives = st.mining_dropped + (not by_llm), st.false_negatives + by_llm
            rejects.append(
                _rejection(
                    fn.get((q.id, neg.id)) if by_llm else None,
                    d.reason,
                    f"candidate {neg.id} rank {d.candidate.rank}, cosine {d.candidate.sim:.4f}, positive "
                    f"{m.pos_sim:.4f}; query: {q.text}",
                    neg.passage,
                    q.id,
                    FN_JUDGE if by_llm else MINE,
                    stage=RejectStage.filter,
                    filter=FilterName.fn_judge if by_llm else FilterName.mining,
                    score=d.score,
                )
            )
        if not keep:
            st.no_negative += 1
            rejects.append(
                _rejection(
                    q.raw,
                    Reason.no_negative,
                    f"{len(drops)} candidates dropped, none left (pool too small?)",
                    q.text,
                    q.id,
                    q.type,
                )
            )
            continue
        st.with_rows[q.type] = st.with_rows.get(q.type, 0) + 1
        for c in keep:
            neg = passages[c.passage]
            rows.append(
                RetrievalRow(
                    id=row_id(q.id, q.text, neg.id),
                    query=q.text,
                    positive=q.passage.passage,
                    negative=neg.passage,
                    query_type=q.type,
                    pos_sim=m.pos_sim,
                    neg_sim=c.sim,
                    neg_rank=c.rank,
                    judge_score=k.score,
                    fn_score=fn_scores.get(c.passage),
                    source_id=q.id,
                    passage_id=q.passage.id,
                    negative_id=neg.id,
                    judge_model=k.judge.provenance.model,
                    provenance=q.raw.provenance,
                )
            )
    st.rows = len(rows)
    st.pos_sim_sum, st.neg_sim_sum = sum(r.pos_sim for r in rows), sum(r.neg_sim for r in rows)
    st.judge_score_sum = sum(r.judge_score for r in rows)
    return Assembled(rows, rejects, st)


def per_type_stats(tally: Tally, stats: Stats, cfg: RunConfig) -> list[TypeStats]:
    """Per query type (the negatives kind's table, so `contrastgen inspect` shows it): units, queries that made rows
    (``kept``; ``yield_`` = kept / units), rows per split, the top rejection reasons of its queries."""
    reasons: dict[str, Counter] = defaultdict(Counter)
    for (task, reason), n in tally.reasons.items():
        reasons[task][reason] += n
    out = []
    for t in (t.value for t in settings(cfg).types):
        units, kept = tally.units[t], stats.with_rows.get(t, 0)
        top = ", ".join(f"{r} {n}" for r, n in sorted(reasons[t].items(), key=lambda x: (-x[1], x[0]))[:3])
        out.append(
            TypeStats(
                t, units, kept, kept / units if units else 0.0, tally.kept[(t, "train")], tally.kept[(t, "test")], top
            )
        )
    return out


def _as_training(table: pa.Table) -> pa.Table:
    """Retrieval rows in the training layout: the query is the anchor, its query type the type."""
    return training_layout(table, {"query": "anchor", "query_type": "type"})


@dataclass(frozen=True)
class Retrieval:
    """The retrieval-triplets kind: query (per passage and type) -> judge -> mining [-> fn_judge], one row per
    (query, negative); :func:`assemble` applies the judge, the mining rules and the false-negative judge."""

    name: str = "retrieval"
    help: str = "retrieval triplets (synthetic queries for passages, judged; hard negatives mined from the corpus)"
    input_help: str = "passages file (.jsonl/.csv/.parquet) or datasets folder; field `passage` (id optional)"
    anchor: str = "query"
    type_column: str = "query_type"
    sample_key: str = "query_type"
    schema: pa.Schema = SCHEMA
    card_template: str = "retrieval.md"
    tags: tuple[str, ...] = ("retrieval", "hard-negatives", "synthetic-queries", "sentence-embeddings")
    positive_task: str | None = None
    part_assembles: bool = False  # the judge stage reads the query stage
    scores_retrieval: bool = True  # its anchors are queries, its positives the passages they retrieve
    section: type[RetrievalConfig] = RetrievalConfig
    filters: FilterConfig = FILTER_DEFAULTS
    flags: tuple[Flag, ...] = (
        Flag(
            "--types",
            "retrieval",
            "types",
            {
                "nargs": "+",
                "choices": [t.value for t in QueryType],
                "metavar": "TYPE",
                "help": f"query types (default: all): {', '.join(t.value for t in QueryType)}",
            },
        ),
        Flag(
            "--fn-judge",
            "retrieval",
            "fn_judge",
            {
                "action": "store_const",
                "const": {"enabled": True},
                "help": "also ask the LLM whether the closest mined candidates answer the query "
                "(drops false negatives)",
            },
        ),
    )

    def anchor_of(self, row: RetrievalRow) -> str:
        return row.query

    def type_of(self, row: RetrievalRow) -> str:
        return row.query_type

    def settings_problems(self, cfg: RunConfig) -> list[str]:
        return []

    def check(self, cfg: RunConfig) -> None:
        check_input_output(cfg)

    def templates(self, cfg: RunConfig) -> dict[str, Template]:
        return templates_for(cfg)

    def read(self, cfg: RunConfig) -> Inputs:
        passages, rejects = read_passages(cfg.input)
        return Inputs(passages, rejects, len(passages) + len(rejects))

    def stages(self, cfg: RunConfig) -> tuple[str, ...]:
        return (QUERY, JUDGE, FN_JUDGE) if settings(cfg).fn_judge.enabled else (QUERY, JUDGE)

    def task_order(self, cfg: RunConfig) -> list[str]:
        return [*(t.value for t in settings(cfg).types), JUDGE, FN_JUDGE]

    def units(self, stage: str, ctx: Context) -> list[Unit]:
        cfg = ctx.cfg
        if stage == QUERY:
            return query_units(ctx.inputs.records, cfg, ctx.templates)
        if stage == JUDGE:
            return judge_units(
                [Judged(q.id, q.text, q.type, q.passage.id, q.passage.passage) for q in queries(ctx)[0]],
                JUDGE,
                cfg,
                ctx.templates,
            )
        return judge_units(fn_items(ctx, kept_queries(ctx)[0]), FN_JUDGE, cfg, ctx.templates)

    def render(self, unit: Unit, ctx: Context) -> GenerationRequest:
        src, tpl = unit.source, ctx.templates[JUDGE if unit.task in (JUDGE, FN_JUDGE) else unit.task]
        values = (
            {"query": src.query, "passage": src.passage} if unit.task in (JUDGE, FN_JUDGE) else {"passage": src.passage}
        )
        return GenerationRequest(unit.key, tpl.messages(values), sampling_of(unit.task, unit.seed, ctx.cfg))

    def mode(self, unit: Unit, cfg: RunConfig) -> str:
        return unit.task

    def assemble(self, ctx: Context, raws: list[RawResult]) -> Assembled:
        return assemble(ctx)

    def assembly_settings(self, cfg: RunConfig) -> dict[str, Any]:
        return {}

    def reject_task(self, row: RetrievalRow) -> str:
        return row.query_type

    def table(self, rows: list[RetrievalRow]) -> pa.Table:
        return rows_table(rows, SCHEMA)

    def positives(
        self, rows: list[RetrievalRow], raws: list[RawResult], assembled: Assembled, positive_drops: int
    ) -> int:
        return len({r.passage_id for r in rows})  # distinct positive passages in rows

    def card(self, ctx: Context, tally: Tally) -> CardFacts:
        stats = tally.stats or Stats()
        per_type = per_type_stats(tally, stats, ctx.cfg)
        means = stats.means()
        return CardFacts(
            samples=pick_samples(tally.samples, "query_type", 3, 12),
            stats=means,
            per_type=per_type,
            manifest={"retrieval": finite(means), "per_type": [asdict(s) for s in per_type]},
        )

    def as_training(self, table: pa.Table) -> pa.Table:
        return _as_training(table)


KIND = Retrieval()
