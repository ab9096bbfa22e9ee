"""Synthetic sentence pairs (SynCSE: Zhang et al. 2023, "Contrastive Learning of Sentence Embeddings from
Scratch"; MultiCSR: Wang et al. 2024, "Large Language Models can Contrastively Refine their Generation for
Better Sentence Representation Learning").

Task contract, three stages, each a set of units in the same resumable store:
- ``seed`` (from-scratch mode only): inputs :class:`TopicRecord`; ``seeds_per_topic`` one-line sentences per
  topic, each sample with its own seed; valid distinct ones become :class:`SentenceRecord` anchors.
- ``entail`` / ``contradict``: inputs :class:`SentenceRecord`; one instruction variant per row and task,
  picked by hash and recorded (``pos_instruction``, ``neg_instruction``); the first valid sample wins.
  Refusals, meta-text ("Here is a sentence: ..." -> ``chatter``), copies and multi-line answers are rejected.
- ``judge``: inputs :class:`JudgeItem` (sentence, candidate); the same model rates similarity 0-5, greedy.
Keep rule (:func:`keep_rule`): roles swap when the "contradiction" scores higher than the "entailment"
(recorded as ``swapped``); then keep when positive >= ``positive_min``, negative <= ``negative_max`` and
the two scores differ.

Why one module of about 480 lines: it is the kind's logic, read top to bottom (seed, generate, judge, keep rule,
assembly); its row, schema and settings are in :mod:`pipeline.kinds.pairs.schema`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import pyarrow as pa

from pipeline.errors import ContrastgenError
from pipeline.filters.config import FilterConfig
from pipeline.inputs import read_sentences
from pipeline.kinds.base import (
    Assembled,
    CardFacts,
    Context,
    Flag,
    Inputs,
    Tally,
    check_input_output,
    pick_samples,
    raw_rejection,
    row_id,
    sha,
    training_layout,
    unit_seed,
)
from pipeline.kinds.base import unit_key as _unit_key
from pipeline.kinds.pairs.schema import FILTER_DEFAULTS, SCHEMA, PairRow, PairsConfig
from pipeline.records import (
    GenerationRequest,
    JudgeItem,
    RawResult,
    Reason,
    Rejection,
    Sampling,
    SentenceRecord,
    TopicRecord,
    Unit,
)
from pipeline.settings import BaseRunConfig as RunConfig
from pipeline.shards.card import finite
from pipeline.shards.schema import rows_table
from pipeline.text.edits import Candidate, Failure, parse_answer
from pipeline.text.scores import SCORES, parse_score
from pipeline.text.templates import Template, load_template


def settings(cfg: RunConfig) -> PairsConfig:
    """This kind's section of the run config (``pairs:``)."""
    return cfg.section(PairsConfig)


SEED, ENTAIL, CONTRADICT, JUDGE = "seed", "entail", "contradict", "judge"
SLOTS = {SEED: ("topic",), ENTAIL: ("sentence",), CONTRADICT: ("sentence",), JUDGE: ("sentence", "candidate")}
GENERATE = "generate"  # the stage of the entail and contradict units


def templates_for(cfg: RunConfig) -> dict[str, Template]:
    """Every configured variant plus the judge and seed templates, by file stem; each checked for its task."""
    p = settings(cfg)
    names = {**{n: ENTAIL for n in p.entail}, **{n: CONTRADICT for n in p.contradict}, JUDGE: JUDGE, SEED: SEED}
    out = {}
    for name, task in names.items():
        out[name] = load_template(p.prompts_dir / f"{name}.yaml", SLOTS[task], task=task)
    return out


def variant_of(sentence_id: str, task: str, cfg: RunConfig) -> str:
    """The instruction variant of one row and task: a hash of the run seed, row id and task picks it."""
    names = settings(cfg).entail if task == ENTAIL else settings(cfg).contradict
    return names[unit_seed(cfg.sampling.seed, sentence_id, task) % len(names)]


def _key(row: list, task: str, tpl: Template, s: Sampling, cfg: RunConfig) -> str:
    return _unit_key(row, task, tpl.sha256, s, cfg)


def _unit_seed(cfg: RunConfig, *parts: str) -> int:
    return unit_seed(cfg.sampling.seed, *parts)


def sampling_of(task: str, seed: int, cfg: RunConfig) -> Sampling:
    s, j = cfg.sampling, settings(cfg).judge
    if task == JUDGE:
        return Sampling(j.temperature, 1.0, j.max_tokens, 1, seed, choices=SCORES)
    if task == SEED:
        return Sampling(max(s.temperature, 0.9), s.top_p, s.max_tokens, settings(cfg).seeds_per_topic, seed)
    return Sampling(s.temperature, s.top_p, s.max_tokens, s.n, seed)


def seed_units(cfg: RunConfig, templates: dict[str, Template]) -> list[Unit]:
    tpl = templates[SEED]
    units = []
    for topic in dict.fromkeys(settings(cfg).topics):
        rec = TopicRecord("t-" + sha(topic)[:12], topic)
        units.append(
            Unit(
                _key([rec.id, topic], SEED, tpl, sampling_of(SEED, 0, cfg), cfg),
                rec,
                SEED,
                tpl.sha256,
                _unit_seed(cfg, rec.id, SEED),
            )
        )
    return units


def generation_units(sentences: list[SentenceRecord], cfg: RunConfig, templates: dict[str, Template]) -> list[Unit]:
    """One ``entail`` and one ``contradict`` unit per sentence, each with its row's instruction variant."""
    units = []
    for rec in sentences:
        for task in (ENTAIL, CONTRADICT):
            tpl = templates[variant_of(rec.id, task, cfg)]
            key = _key([rec.id, rec.sentence], task, tpl, sampling_of(task, 0, cfg), cfg)
            units.append(Unit(key, rec, task, tpl.sha256, _unit_seed(cfg, rec.id, task)))
    return units


def judge_units(items: list[JudgeItem], cfg: RunConfig, templates: dict[str, Template]) -> list[Unit]:
    tpl = templates[JUDGE]
    return [
        Unit(
            _key([it.id, it.sentence, it.candidate, it.role], JUDGE, tpl, sampling_of(JUDGE, 0, cfg), cfg),
            it,
            JUDGE,
            tpl.sha256,
            _unit_seed(cfg, it.id, it.role, JUDGE),
        )
        for it in items
    ]


def render(unit: Unit, cfg: RunConfig, templates: dict[str, Template]) -> GenerationRequest:
    src = unit.source
    if unit.task == SEED:
        tpl, values = templates[SEED], {"topic": src.topic}
    elif unit.task == JUDGE:
        tpl, values = templates[JUDGE], {"sentence": src.sentence, "candidate": src.candidate}
    else:
        tpl, values = templates[variant_of(src.id, unit.task, cfg)], {"sentence": src.sentence}
    return GenerationRequest(unit.key, tpl.messages(values), sampling_of(unit.task, unit.seed, cfg))


def instruction_of(raw: RawResult, templates: dict[str, Template]) -> str:
    """The variant name of a generated candidate, from its recorded prompt sha."""
    return next(name for name, t in templates.items() if t.sha256 == raw.provenance.prompt_sha)


def parse_candidate(raw: RawResult) -> Candidate | Rejection:
    """First valid one-line sentence among the samples; else a rejection with the first sample's reason."""
    first: Failure | None = None
    for text, finish in zip(raw.texts, raw.finish_reasons, strict=True):
        cand = parse_answer(raw.source_text, text, "rewrite", finish)
        if isinstance(cand, Candidate) and cand.text.strip(" .").lower() == raw.source_text.strip(" .").lower():
            cand = Failure(Reason.copy_of_input)
        if isinstance(cand, Candidate):
            return cand
        first = first or cand
    first = first or Failure(Reason.empty)
    return raw_rejection(raw, first.reason, first.detail, " ||| ".join(raw.texts))


def keep_rule(pos: int, neg: int, positive_min: int, negative_max: int) -> tuple[bool, bool, Reason | Literal[""]]:
    """(kept, swapped, reason) for the two judged scores of one sentence's candidates.

    >>> rules = keep_rule(5, 1, 3, 3), keep_rule(1, 4, 3, 3), keep_rule(2, 1, 3, 3), keep_rule(3, 3, 3, 3)
    >>> [(kept, swapped, str(reason)) for kept, swapped, reason in rules]
    [(True, False, ''), (True, True, ''), (False, False, 'judge_positive_low'), (False, False, 'judge_tie')]
    """
    swapped = neg > pos
    if swapped:
        pos, neg = neg, pos
    if pos == neg:
        return False, False, Reason.judge_tie
    if pos < positive_min:
        return False, swapped, Reason.judge_positive_low
    if neg > negative_max:
        return False, swapped, Reason.judge_negative_high
    return True, swapped, ""


@dataclass(frozen=True)
class Generated:
    """One sentence's valid candidate of one task, with the instruction that made it."""

    text: str
    instruction: str
    raw: RawResult


def seed_sentences(raws: list[RawResult]) -> tuple[list[SentenceRecord], list[Rejection]]:
    """From-scratch mode: every valid, distinct seed sample becomes an anchor sentence (id: hash of its text)."""
    sentences, rejects, seen = [], [], set()
    for raw in sorted(raws, key=lambda r: r.source_id):
        for i, (text, finish) in enumerate(zip(raw.texts, raw.finish_reasons, strict=True)):
            cand = parse_answer(raw.source_text, text, "rewrite", finish)
            if isinstance(cand, Failure):
                rejects.append(raw_rejection(raw, cand.reason, cand.detail, text, seed=raw.provenance.seed + i))
            elif cand.text.lower() in seen:
                rejects.append(
                    raw_rejection(
                        raw,
                        Reason.duplicate_seed,
                        "an earlier seed sample said the same",
                        text,
                        seed=raw.provenance.seed + i,
                    )
                )
            else:
                seen.add(cand.text.lower())
                sentences.append(SentenceRecord("s-" + sha(cand.text)[:12], cand.text))
    return sentences, rejects


def candidates(
    raws: list[RawResult], templates: dict[str, Template]
) -> tuple[dict[tuple[str, str], Generated], list[Rejection]]:
    """Each sentence's valid entailment and contradiction, by (sentence id, task); failures as rejections."""
    out, rejects = {}, []
    for raw in raws:
        cand = parse_candidate(raw)
        if isinstance(cand, Rejection):
            rejects.append(cand)
        else:
            out[(raw.source_id, raw.task)] = Generated(cand.text, instruction_of(raw, templates), raw)
    return out, rejects


def judge_items(sentences: list[SentenceRecord], cands: dict[tuple[str, str], Generated]) -> list[JudgeItem]:
    """Both candidates of every sentence that has both (a lone candidate cannot make a triplet: not judged)."""
    return [
        JudgeItem(s.id, s.sentence, cands[(s.id, role)].text, role)
        for s in sentences
        if (s.id, ENTAIL) in cands and (s.id, CONTRADICT) in cands
        for role in (ENTAIL, CONTRADICT)
    ]


@dataclass
class Stats:
    sentences: int = 0
    seeds: int = 0  # from-scratch mode: seed sentences kept
    valid_entail: int = 0
    valid_contradict: int = 0
    judged: int = 0  # sentences whose two candidates were both scored
    swapped: int = 0  # kept rows whose roles were swapped
    rows: int = 0  # rows assembled (before the filter stage)
    pos_score_sum: int = 0  # judge scores of those rows' positives and negatives (sums: blocks add up)
    neg_score_sum: int = 0

    def means(self) -> dict:
        """The card's and manifest's view: the sums as means over the rows (NaN without rows)."""
        d = asdict(self)
        for side in ("pos", "neg"):
            total = d.pop(f"{side}_score_sum")
            d[f"{side}_score_mean"] = round(total / self.rows, 3) if self.rows else float("nan")
        return d


def assemble(
    sentences: list[SentenceRecord],
    cands: dict[tuple[str, str], Generated],
    scores: dict[tuple[str, str], tuple[str, RawResult]],
    cfg: RunConfig,
) -> tuple[list[PairRow], list[Rejection], Stats]:
    """Apply the keep rule to every sentence with two judged candidates; a lone candidate is rejected (no_partner)."""
    j, rows, rejects = settings(cfg).judge, [], []
    st = Stats(
        sentences=len(sentences),
        valid_entail=sum(k[1] == ENTAIL for k in cands),
        valid_contradict=sum(k[1] == CONTRADICT for k in cands),
    )
    for s in sentences:
        e, c = cands.get((s.id, ENTAIL)), cands.get((s.id, CONTRADICT))
        if e is None or c is None:
            rejects += [
                raw_rejection(g.raw, Reason.no_partner, "the other candidate of this sentence was rejected", g.text)
                for g in (e, c)
                if g is not None
            ]
            continue
        if (s.id, ENTAIL) not in scores or (s.id, CONTRADICT) not in scores:  # the engine gave up on a judge unit
            rejects += [
                raw_rejection(
                    g.raw,
                    Reason.no_score,
                    "the judge of this pair failed (see its engine_crash/engine_timeout row)",
                    g.text,
                )
                for g in (e, c)
            ]
            continue
        (e_text, e_raw), (c_text, c_raw) = scores[(s.id, ENTAIL)], scores[(s.id, CONTRADICT)]
        e_score, c_score = parse_score(e_text), parse_score(c_text)
        if e_score is None or c_score is None:
            bad = e_raw if e_score is None else c_raw
            rejects.append(raw_rejection(bad, Reason.unparsable_score, "expected one digit 0-5", bad.texts[0]))
            continue
        st.judged += 1
        kept, swapped, reason = keep_rule(e_score, c_score, j.positive_min, j.negative_max)
        pos, neg = (c, e) if swapped else (e, c)
        if reason:  # not kept
            rejects.append(
                raw_rejection(
                    neg.raw,
                    reason,
                    f"positive {max(e_score, c_score)}, negative {min(e_score, c_score)}: {pos.text}",
                    neg.text,
                )
            )
            continue
        st.swapped += swapped
        rows.append(
            PairRow(
                id=row_id(s.id, pos.text, neg.text),
                anchor=s.sentence,
                positive=pos.text,
                negative=neg.text,
                pos_score=max(e_score, c_score),
                neg_score=min(e_score, c_score),
                swapped=swapped,
                pos_instruction=pos.instruction,
                neg_instruction=neg.instruction,
                source_id=s.id,
                judge_model=e_raw.provenance.model,
                provenance=neg.raw.provenance,
            )
        )
    st.rows, st.pos_score_sum, st.neg_score_sum = (
        len(rows),
        sum(r.pos_score for r in rows),
        sum(r.neg_score for r in rows),
    )
    return rows, rejects, st


def _pairs_as_training(table: pa.Table) -> pa.Table:
    """Sentence pairs in the training layout: the anchor sentence is the anchor, every negative a contradiction."""
    table = table.append_column("type", pa.array(["contradiction"] * table.num_rows, pa.string()))
    return training_layout(table, {})


@dataclass(frozen=True)
class Pairs:
    """The sentence-pairs kind, three stages, each planned from what the one before left in the store:
    [seed (from-scratch mode)] -> generate (entail + contradict) -> judge; :func:`assemble` applies the keep rule."""

    name: str = "pairs"
    help: str = "synthetic sentence pairs (entailment positive, contradiction negative, judged)"
    input_help: str = (
        "sentences file (.jsonl/.csv/.parquet) or datasets folder; field `sentence` (id optional); "
        "omit it and pass --topics for from-scratch mode"
    )
    anchor: str = "anchor"
    type_column: str = "neg_instruction"
    sample_key: str = "neg_instruction"
    schema: pa.Schema = SCHEMA
    card_template: str = "pairs.md"
    tags: tuple[str, ...] = ("sentence-pairs", "nli", "sentence-embeddings")
    positive_task: str | None = None
    part_assembles: bool = False  # the judge stage reads the generate stage
    scores_retrieval: bool = False
    section: type[PairsConfig] = PairsConfig
    filters: FilterConfig = FILTER_DEFAULTS
    flags: tuple[Flag, ...] = (
        Flag(
            "--topics",
            "pairs",
            "topics",
            {"nargs": "+", "metavar": "TOPIC", "help": "from-scratch mode: generate seed sentences about these"},
        ),
    )

    def anchor_of(self, row: PairRow) -> str:
        return row.anchor

    def type_of(self, row: PairRow) -> str:
        return row.neg_instruction

    def settings_problems(self, cfg: RunConfig) -> list[str]:
        return []

    def check(self, cfg: RunConfig) -> None:
        if cfg.output.dir is None:
            raise ContrastgenError("expected output.dir (--out), got none. Fix: pass --out DIR or set it in --config")
        if cfg.input.path is None and not settings(cfg).topics:
            raise ContrastgenError(
                "expected --input (sentences) or pairs.topics (from-scratch mode), got neither. "
                "Fix: pass --input FILE, or --topics T1 T2 ..."
            )
        check_input_output(cfg, input_required=False)

    def templates(self, cfg: RunConfig) -> dict[str, Template]:
        return templates_for(cfg)

    def read(self, cfg: RunConfig) -> Inputs:
        if cfg.input.path is None:
            return Inputs([], [], len(settings(cfg).topics))
        sentences, rejects = read_sentences(cfg.input)
        return Inputs(sentences, rejects, len(sentences) + len(rejects))

    def stages(self, cfg: RunConfig) -> tuple[str, ...]:
        return (GENERATE, JUDGE) if cfg.input.path is not None else (SEED, GENERATE, JUDGE)

    def task_order(self, cfg: RunConfig) -> list[str]:
        return sorted((SEED, ENTAIL, CONTRADICT, JUDGE))  # one task per part where possible

    def sentences(self, ctx: Context) -> tuple[list[SentenceRecord], list[Rejection]]:
        """The anchors: the input's sentences, or (from-scratch mode) the seed stage's valid distinct ones
        (first ``input.limit``), with the seed samples it rejected."""
        if ctx.cfg.input.path is not None:
            return ctx.inputs.records, []
        sentences, rejects = seed_sentences(ctx.raws(SEED))
        return (sentences[: ctx.cfg.input.limit] if ctx.cfg.input.limit else sentences), rejects

    def units(self, stage: str, ctx: Context) -> list[Unit]:
        cfg, templates = ctx.cfg, ctx.templates
        if stage == SEED:
            return seed_units(cfg, templates)
        sentences = self.sentences(ctx)[0]
        if stage == GENERATE:
            return generation_units(sentences, cfg, templates)
        cands = candidates(ctx.raws(GENERATE), templates)[0]
        return judge_units(judge_items(sentences, cands), cfg, templates)

    def render(self, unit: Unit, ctx: Context) -> GenerationRequest:
        return render(unit, ctx.cfg, ctx.templates)

    def mode(self, unit: Unit, cfg: RunConfig) -> str:
        return unit.task

    def assemble(self, ctx: Context, raws: list[RawResult]) -> Assembled:
        by_key = {r.unit_key: r for r in raws}
        cands, cand_rejects = candidates(ctx.raws(GENERATE), ctx.templates)
        scores = {
            (u.source.id, u.source.role): (by_key[u.key].texts[0], by_key[u.key])
            for u in ctx.stages[JUDGE].units
            if u.key in by_key
        }  # a judge unit the engine gave up on leaves its pair unjudged (rejected as no_score)
        sentences, seed_rejects = self.sentences(ctx)
        rows, judge_rejects, stats = assemble(sentences, cands, scores, ctx.cfg)
        stats.seeds = len(sentences) if SEED in ctx.stages else 0
        return Assembled(rows, seed_rejects + cand_rejects + judge_rejects, stats)

    def assembly_settings(self, cfg: RunConfig) -> dict[str, Any]:
        return {}

    def reject_task(self, row: PairRow) -> str:
        return CONTRADICT

    def table(self, rows: list[PairRow]) -> pa.Table:
        return rows_table(rows, SCHEMA)

    def positives(self, rows: list[PairRow], raws: list[RawResult], assembled: Assembled, positive_drops: int) -> int:
        return len(rows)

    def card(self, ctx: Context, tally: Tally) -> CardFacts:
        stats = (tally.stats or Stats()).means()
        return CardFacts(
            samples=pick_samples(tally.samples, "neg_instruction", 3), stats=stats, manifest={"pairs": finite(stats)}
        )

    def as_training(self, table: pa.Table) -> pa.Table:
        return _pairs_as_training(table)


KIND = Pairs()
