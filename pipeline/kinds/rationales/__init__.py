"""Contrastive rationales (QCRD: Wang et al. 2023, "Democratizing Reasoning Ability: Tailored Learning from
Large Language Model"; GRACE: Khalifa et al. 2023, "GRACE: Discriminator-Guided Chain-of-Thought Reasoning").

Task contract
- inputs: :class:`QuestionRecord` (``id``, ``question``, normalised gold ``answer`` or None, ``choices``)
- units: per question, ``sampled`` (k rationales at the main setting) and ``adversarial`` (n at a weaker,
  hotter setting), each sample with its own seed (seed + i)
- render: :func:`render` (``prompts/rationales/solve.yaml``, or ``solve_choice.yaml`` when the row has choices)
- parse: :func:`parse_sample` (rejects truncated, refusals, too short, no parsable answer)
- assemble: :func:`assemble` (vote, label, quality, pair each negative with a positive)

Labels: a rationale is positive when its answer equals the gold answer; without gold, when it equals the
self-consistency majority of the sampled rationales (``label_source = majority``; the majority needs at
least two votes and no tie). Wrong sampled rationales are ``sampled_wrong`` negatives; wrong adversarial
ones are ``adversarial`` negatives. Adversarial rationales that reach the label are not used.

Quality (0-1) of a rationale: 0.5 x correct + 0.3 x agreement (share of the sampled answers equal to its
answer) + 0.1 x format (the "answer is" cue in its last 60 characters) + 0.1 x length (within
[min_chars, 40 x min_chars]).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.filters.config import FilterConfig
from pipeline.inputs import read_questions
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
    training_layout,
    unit_key,
    unit_seed,
)
from pipeline.kinds.rationales.schema import FILTER_DEFAULTS, SCHEMA, RationaleRow, RationalesConfig
from pipeline.records import (
    GenerationRequest,
    QuestionRecord,
    RawResult,
    Reason,
    Rejection,
    Sampling,
    Unit,
)
from pipeline.settings import BaseRunConfig as RunConfig
from pipeline.shards.card import finite
from pipeline.shards.schema import rows_table
from pipeline.text.answers import AnswerKind, answer_kind_of, extract_answer, is_refusal, vote
from pipeline.text.templates import Template, load_template


def settings(cfg: RunConfig) -> RationalesConfig:
    """This kind's section of the run config (``rationales:``)."""
    return cfg.section(RationalesConfig)


SAMPLED, ADVERSARIAL = "sampled", "adversarial"
TEMPLATES = {"number": ("solve", ("question",)), "choice": ("solve_choice", ("question", "choices"))}
MODE = "cot"  # provenance `mode` of every rationale


def task_names(cfg: RunConfig) -> list[str]:
    return [SAMPLED] + ([ADVERSARIAL] if settings(cfg).adversarial.enabled else [])


def templates_for(cfg: RunConfig) -> dict[str, Template]:
    """Both answer kinds' templates, by template name (a run may mix numeric and multiple-choice rows)."""
    folder = settings(cfg).prompts_dir
    return {name: load_template(folder / f"{name}.yaml", slots, task=name) for name, slots in TEMPLATES.values()}


def answer_kind(q: QuestionRecord, cfg: RunConfig) -> AnswerKind:
    return answer_kind_of(settings(cfg).answer_kind, q.choices)


def template_of(q: QuestionRecord, cfg: RunConfig, templates: dict[str, Template]) -> Template:
    return templates[TEMPLATES[answer_kind(q, cfg)][0]]


def sampling_of(task: str, unit_seed: int, cfg: RunConfig) -> Sampling:
    r = settings(cfg)
    if task == ADVERSARIAL:
        a = r.adversarial
        return Sampling(a.temperature, a.top_p, r.max_tokens, a.n, unit_seed, stop_at_newline=False)
    return Sampling(r.temperature, r.top_p, r.max_tokens, r.k, unit_seed, stop_at_newline=False)


def plan_units(questions: list[QuestionRecord], cfg: RunConfig, templates: dict[str, Template]) -> list[Unit]:
    """One unit per question x task; the key hashes row, template, model, the task's sampling, seed and code."""
    units = []
    for q in questions:
        tpl = template_of(q, cfg, templates)
        for t in task_names(cfg):
            key = unit_key([q.id, q.question, q.answer, list(q.choices)], t, tpl.sha256, sampling_of(t, 0, cfg), cfg)
            units.append(Unit(key, q, t, tpl.sha256, unit_seed(cfg.sampling.seed, q.id, t)))
    return units


def choices_text(choices: tuple[str, ...]) -> str:
    """ "(A) bank (B) library ..." as the template's ``{choices}`` slot."""
    return " ".join(f"({'ABCDE'[i]}) {c}" for i, c in enumerate(choices))


def render(unit: Unit, cfg: RunConfig, templates: dict[str, Template]) -> GenerationRequest:
    q: QuestionRecord = unit.source
    values = {"question": q.question, "choices": choices_text(q.choices)}
    msgs = template_of(q, cfg, templates).messages(values)
    return GenerationRequest(unit.key, msgs, sampling_of(unit.task, unit.seed, cfg))


@dataclass(frozen=True)
class Sample:
    """One valid rationale with its parsed answer."""

    text: str
    answer: str
    seed: int
    task: str
    raw: RawResult


def parse_sample(
    text: str, finish: str, kind: AnswerKind, choices: tuple[str, ...], min_chars: int
) -> str | tuple[Reason, str]:
    """The normalised answer of a valid rationale, or (reason, detail) when it is rejected.

    >>> parse_sample("2 + 2 = 4. The answer is 4.", "stop", "number", (), 5)
    '4'
    >>> parse_sample("2 + 2 = 4. The answer", "length", "number", (), 5)
    (<Reason.truncated: 'truncated'>, 'cut at max_tokens')
    """
    text = text.strip()
    if finish == "length":
        return Reason.truncated, "cut at max_tokens"
    if is_refusal(text):
        return Reason.refusal, "refuses or apologises"
    if len(text) < min_chars:
        return Reason.too_short, f"{len(text)} < {min_chars} chars"
    answer = extract_answer(text, kind, choices)
    return (Reason.no_answer, f"no {kind} answer found") if answer is None else answer


def quality(sample: Sample, label: str, counts: dict[str, int], min_chars: int) -> float:
    """The module docstring's weighted quality score of one rationale, in [0, 1]."""
    total = sum(counts.values())
    agreement = counts.get(sample.answer, 0) / total if total else 0.0
    formatted = "answer is" in sample.text[-60:].lower()
    length_ok = min_chars <= len(sample.text) <= 40 * max(min_chars, 1)
    return round(0.5 * (sample.answer == label) + 0.3 * agreement + 0.1 * formatted + 0.1 * length_ok, 4)


@dataclass
class Stats:
    """What the card reports beside the rows: labels, the model's accuracy, why questions gave no rows."""

    questions: int = 0
    label_gold: int = 0
    label_majority: int = 0
    no_label: int = 0
    no_positive: int = 0
    with_rows: int = 0
    sampled_valid: int = 0
    sampled_correct: int = 0  # valid sampled rationales whose answer is the gold answer (gold rows only)
    sampled_with_gold: int = 0
    vote_correct: int = 0  # questions whose majority answer is the gold answer
    adversarial_valid: int = 0
    adversarial_correct: int = 0  # not used: an adversarial rationale that reaches the label is no negative
    by_source: dict[str, int] = field(default_factory=dict)


def _label(q: QuestionRecord, majority: str | None, counts: dict[str, int]) -> tuple[str | None, str]:
    """The gold answer; else a clear majority (two votes or more, no tie); else None."""
    if q.answer is not None:
        return q.answer, "gold"
    top = sorted(counts.values())[-2:]
    if majority is not None and counts[majority] >= 2 and (len(top) == 1 or top[0] < top[1]):
        return majority, "majority"
    return None, ""


def _reject(raw: RawResult, text: str, seed: int, reason: Reason, detail: str) -> Rejection:
    return raw_rejection(raw, reason, detail, text, seed=seed)


def _samples(
    raws: list[RawResult], q: QuestionRecord, cfg: RunConfig, rejects: list[Rejection]
) -> dict[str, list[Sample]]:
    valid: dict[str, list[Sample]] = {SAMPLED: [], ADVERSARIAL: []}
    for raw in raws:
        for i, (text, finish) in enumerate(zip(raw.texts, raw.finish_reasons, strict=True)):
            out = parse_sample(text, finish, answer_kind(q, cfg), q.choices, settings(cfg).min_chars)
            if isinstance(out, tuple):
                rejects.append(_reject(raw, text, raw.provenance.seed + i, *out))
            else:
                valid[raw.task].append(Sample(" ".join(text.split()), out, raw.provenance.seed + i, raw.task, raw))
    return valid


def assemble(
    raws: list[RawResult], questions: dict[str, QuestionRecord], cfg: RunConfig
) -> tuple[list[RationaleRow], list[Rejection], Stats]:
    """Parse every rationale, label each question, and pair each negative with a positive (best quality first,
    round robin, so every positive is used once before any is reused)."""
    by_q: dict[str, list[RawResult]] = defaultdict(list)
    for r in raws:
        by_q[r.source_id].append(r)
    rows: list[RationaleRow] = []
    rejects: list[Rejection] = []
    st = Stats()
    for qid in sorted(by_q):
        q, st.questions = questions[qid], st.questions + 1
        valid = _samples(by_q[qid], q, cfg, rejects)
        majority, counts = vote([s.answer for s in valid[SAMPLED]])
        label, source = _label(q, majority, counts)
        st.sampled_valid += len(valid[SAMPLED])
        st.adversarial_valid += len(valid[ADVERSARIAL])
        if q.answer is not None:
            st.sampled_with_gold += len(valid[SAMPLED])
            st.sampled_correct += sum(s.answer == q.answer for s in valid[SAMPLED])
            st.vote_correct += majority == q.answer
        if label is None:
            st.no_label += 1
            rejects += [
                _reject(s.raw, s.text, s.seed, Reason.no_label, f"no gold answer and no clear majority in {counts}")
                for s in valid[SAMPLED] + valid[ADVERSARIAL]
            ]
            continue
        st.label_gold += source == "gold"
        st.label_majority += source == "majority"
        st.adversarial_correct += sum(s.answer == label for s in valid[ADVERSARIAL])
        scored = {
            id(s): quality(s, label, counts, settings(cfg).min_chars) for s in valid[SAMPLED] + valid[ADVERSARIAL]
        }
        pos = sorted((s for s in valid[SAMPLED] if s.answer == label), key=lambda s: (-scored[id(s)], s.seed))
        negs = [(s, "sampled_wrong") for s in valid[SAMPLED] if s.answer != label]
        negs += [(s, ADVERSARIAL) for s in valid[ADVERSARIAL] if s.answer != label]
        if not pos:
            st.no_positive += bool(negs)
            rejects += [
                _reject(s.raw, s.text, s.seed, Reason.no_positive, f"no rationale reached the label {label}")
                for s, _ in negs
            ]
            continue
        st.with_rows += bool(negs)
        for j, (neg, src) in enumerate(negs):
            p = pos[j % len(pos)]
            st.by_source[src] = st.by_source.get(src, 0) + 1
            rows.append(
                RationaleRow(
                    id=row_id(qid, p.text, neg.text),
                    question=q.question,
                    positive=p.text,
                    negative=neg.text,
                    neg_source=src,
                    answer=label,
                    label_source=source,
                    pos_answer=p.answer,
                    neg_answer=neg.answer,
                    votes_for_label=counts.get(label, 0),
                    votes_total=sum(counts.values()),
                    pos_quality=scored[id(p)],
                    neg_quality=scored[id(neg)],
                    source_id=qid,
                    pos_seed=p.seed,
                    provenance=replace(neg.raw.provenance, seed=neg.seed),  # the negative's own sample seed
                )
            )
    return rows, rejects, st


def _as_groups_of_positives(table: pa.Table) -> pa.Table:
    """Rationale rows in the training layout: the question is the anchor, ``neg_source`` the type, and each
    (question, positive) is its own group (a question has several positives; the batch sampler never puts
    two groups with the same anchor in one batch, so they are never each other's in-batch negatives)."""
    group = pc.binary_join_element_wise(table["source_id"], pc.cast(table["pos_seed"], pa.string()), "/")
    table = table.set_column(table.column_names.index("source_id"), "source_id", group)
    return training_layout(table, {"question": "anchor", "neg_source": "type"})


@dataclass(frozen=True)
class Rationales:
    """The rationales kind: one stage (sampled + adversarial units per question); vote, label and pair in
    :func:`assemble`; a group whose positive fails the filters loses its rows."""

    name: str = "rationales"
    help: str = "contrastive rationales (sampled chains of thought, split by answer)"
    input_help: str = (
        "questions file (.jsonl/.csv/.parquet) or datasets folder; fields question, answer (optional), "
        "choices (optional)"
    )
    anchor: str = "question"
    type_column: str = "neg_source"
    sample_key: str = "neg_source"
    schema: pa.Schema = SCHEMA
    card_template: str = "rationales.md"
    tags: tuple[str, ...] = ("rationales", "chain-of-thought", "reasoning")
    positive_task: str | None = None
    part_assembles: bool = False  # a question's samples may span parts
    scores_retrieval: bool = False
    section: type[RationalesConfig] = RationalesConfig
    filters: FilterConfig = FILTER_DEFAULTS
    flags: tuple[Flag, ...] = (
        Flag("--k", "rationales", "k", {"type": int, "help": "rationales sampled per question (default 5)"}),
    )

    def anchor_of(self, row: RationaleRow) -> str:
        return row.question

    def type_of(self, row: RationaleRow) -> str:
        return row.neg_source

    def settings_problems(self, cfg: RunConfig) -> list[str]:
        return []

    def check(self, cfg: RunConfig) -> None:
        check_input_output(cfg)

    def templates(self, cfg: RunConfig) -> dict[str, Template]:
        return templates_for(cfg)

    def read(self, cfg: RunConfig) -> Inputs:
        questions, rejects = read_questions(cfg.input, settings(cfg).answer_kind)
        return Inputs(questions, rejects, len(questions) + len(rejects))

    def stages(self, cfg: RunConfig) -> tuple[str, ...]:
        return ("generate",)

    def task_order(self, cfg: RunConfig) -> list[str]:
        return task_names(cfg)

    def units(self, stage: str, ctx: Context) -> list[Unit]:
        return plan_units(ctx.inputs.records, ctx.cfg, ctx.templates)

    def render(self, unit: Unit, ctx: Context) -> GenerationRequest:
        return render(unit, ctx.cfg, ctx.templates)

    def mode(self, unit: Unit, cfg: RunConfig) -> str:
        return MODE

    def assemble(self, ctx: Context, raws: list[RawResult]) -> Assembled:
        return Assembled(*assemble(raws, {q.id: q for q in ctx.inputs.records}, ctx.cfg))

    def assembly_settings(self, cfg: RunConfig) -> dict[str, Any]:
        return {}

    def reject_task(self, row: RationaleRow) -> str:
        return row.neg_source

    def table(self, rows: list[RationaleRow]) -> pa.Table:
        return rows_table(rows, SCHEMA)

    def positives(
        self, rows: list[RationaleRow], raws: list[RawResult], assembled: Assembled, positive_drops: int
    ) -> int:
        return len({(r.source_id, r.positive) for r in rows})  # distinct positive rationales in rows

    def card(self, ctx: Context, tally: Tally) -> CardFacts:
        stats = tally.stats or Stats()
        return CardFacts(
            samples=pick_samples(tally.samples, "neg_source", 3),
            stats=stats,
            manifest={"rationales": finite(asdict(stats))},
        )

    def as_training(self, table: pa.Table) -> pa.Table:
        return _as_groups_of_positives(table)


KIND = Rationales()
