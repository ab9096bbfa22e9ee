"""Typed records at every stage boundary: inputs -> units -> completions -> raw results -> rows.

Arrow appears only at the writers (``pipeline/shards``), against explicit schemas.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Generic, Protocol, TypeVar


class SourceRecord(Protocol):
    """What every unit's source is: an id, and the text its raw result records (``RawResult.source_text``)."""

    @property
    def id(self) -> str: ...

    @property
    def text(self) -> str: ...


S = TypeVar("S", bound=SourceRecord)


@dataclass(frozen=True)
class CaptionRecord:
    """One valid input caption."""

    id: str
    caption: str
    image_ref: str | None = None
    file: str = ""
    line: int = 0
    group: str | None = None  # input.group_column: captions of one group are human views of one thing

    @property
    def text(self) -> str:
        """The source text a unit's raw result records (``RawResult.source_text``)."""
        return self.caption


@dataclass(frozen=True)
class QuestionRecord:
    """One valid input question; ``answer`` is the normalised gold answer (None: no gold, the vote decides)."""

    id: str
    question: str
    answer: str | None
    choices: tuple[str, ...] = ()
    file: str = ""
    line: int = 0

    @property
    def text(self) -> str:
        """The source text a unit's raw result records (``RawResult.source_text``)."""
        return self.question


@dataclass(frozen=True)
class SentenceRecord:
    """One anchor sentence: from the input file, or generated from a topic in from-scratch mode."""

    id: str
    sentence: str
    file: str = ""
    line: int = 0

    @property
    def text(self) -> str:
        """The source text a unit's raw result records (``RawResult.source_text``)."""
        return self.sentence


@dataclass(frozen=True)
class PassageRecord:
    """One passage of a retrieval corpus: the positive its synthetic queries are written for, and a candidate
    hard negative of the other queries."""

    id: str
    passage: str
    file: str = ""
    line: int = 0

    @property
    def text(self) -> str:
        """The source text a unit's raw result records (``RawResult.source_text``)."""
        return self.passage


@dataclass(frozen=True)
class JudgeItem:
    """One (sentence, candidate) pair the judge scores; ``role`` is the candidate's generating task."""

    id: str  # the sentence's id
    sentence: str
    candidate: str
    role: str  # entail | contradict

    @property
    def text(self) -> str:
        """The source text a unit's raw result records (``RawResult.source_text``)."""
        return self.sentence


@dataclass(frozen=True)
class TopicRecord:
    """From-scratch mode: one topic that seed sentences are generated for."""

    id: str
    topic: str

    @property
    def text(self) -> str:
        """The source text a unit's raw result records (``RawResult.source_text``)."""
        return self.topic


class StrCode(str, Enum):
    """A code the data holds as a plain string. Each member's value is its name (``Reason.too_short ==
    "too_short"``), and str(), format(), Arrow, JSON and numpy all write the code, never ``Reason.too_short``."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)


class RejectStage(StrCode):
    """Where a rejected row was rejected: its ``stage`` column (meanings in :data:`REJECT_STAGES`)."""

    input = "input"
    generation = "generation"
    candidate = "candidate"
    filter = "filter"


REJECT_STAGES: dict[RejectStage, str] = {
    RejectStage.input: "a bad input row (pipeline/inputs): the file, line and field say where",
    RejectStage.generation: "a unit's output failed validation, assembly or a judge, or the engine gave up on it",
    RejectStage.candidate: "one paraphrase candidate of a unit that has a valid one (negatives.paraphrase_candidates)",
    RejectStage.filter: "a valid row the filter stage dropped: its filter and score say which rule and by how much",
}


class Reason(StrCode):
    """Why a row is in ``rejected/``: its ``reason`` column, one code per cause (meanings in :data:`REASONS`).
    Every producer names a member; ``tests/test_vocabulary.py`` fails on a reason written as a literal."""

    # input rows (pipeline/inputs)
    invalid_utf8 = "invalid_utf8"
    malformed_json = "malformed_json"
    missing_field = "missing_field"
    wrong_type = "wrong_type"
    empty_caption = "empty_caption"
    caption_too_long = "caption_too_long"
    bad_answer = "bad_answer"
    duplicate_id = "duplicate_id"
    # the engine (pipeline/engines)
    engine_crash = "engine_crash"
    engine_timeout = "engine_timeout"
    # an answer's text (pipeline/text)
    empty = "empty"
    refusal = "refusal"
    multi_line = "multi_line"
    truncated = "truncated"
    chatter = "chatter"
    unparsable = "unparsable"
    span_not_found = "span_not_found"
    no_change = "no_change"
    copy_of_input = "copy_of_input"
    copy_of_passage = "copy_of_passage"
    too_long = "too_long"
    too_short = "too_short"
    type_mismatch = "type_mismatch"
    wrong_word_class = "wrong_word_class"
    content_changed = "content_changed"
    no_answer = "no_answer"
    # assembly and judges (pipeline/kinds)
    no_label = "no_label"
    no_positive = "no_positive"
    duplicate_seed = "duplicate_seed"
    no_partner = "no_partner"
    no_score = "no_score"
    unparsable_score = "unparsable_score"
    judge_tie = "judge_tie"
    judge_positive_low = "judge_positive_low"
    judge_negative_high = "judge_negative_high"
    not_answerable = "not_answerable"
    round_trip = "round_trip"
    no_negative = "no_negative"
    fn_no_score = "fn_no_score"
    positive_aware = "positive_aware"
    # the filter stage (pipeline/filters) and the retrieval kind's mining rules
    positive_out_of_band = "positive_out_of_band"
    positive_meaning_lost = "positive_meaning_lost"
    duplicate_of_published = "duplicate_of_published"
    exact_duplicate = "exact_duplicate"
    near_duplicate = "near_duplicate"
    negative_out_of_band = "negative_out_of_band"
    false_negative = "false_negative"
    above_max_score = "above_max_score"
    below_min_score = "below_min_score"
    absolute_margin = "absolute_margin"
    relative_margin = "relative_margin"
    blind_balance = "blind_balance"


REASONS: dict[Reason, str] = {
    Reason.invalid_utf8: "the input line or cell is not valid UTF-8",
    Reason.malformed_json: "the input line is not a JSON object",
    Reason.missing_field: "the input row lacks a column the input.*_column settings name",
    Reason.wrong_type: "an input field has the wrong type (an id, caption, group or choices)",
    Reason.empty_caption: "the input text (caption, question, sentence, passage) is empty or whitespace",
    Reason.caption_too_long: "the input text is longer than input.max_caption_chars",
    Reason.bad_answer: "the gold answer of an input question cannot be read as its answer kind",
    Reason.duplicate_id: "an earlier input row has the same id",
    Reason.engine_crash: "the unit's request crashed the engine each time it was run alone",
    Reason.engine_timeout: "the unit's part ran past engine.call_timeout_s twice",
    Reason.empty: "the answer is empty",
    Reason.refusal: "the model refused or apologised instead of answering",
    Reason.multi_line: "the answer runs over more than one line",
    Reason.truncated: "the answer was cut at max_tokens",
    Reason.chatter: "the answer is wrapped in chatter (Sure, Here is, a label) instead of being the answer",
    Reason.unparsable: "the answer is not in the edit format asked for (A <-> B, OLD -> NEW)",
    Reason.span_not_found: "a span the edit names is not in the caption",
    Reason.no_change: "the edit changes nothing (the same spans, OLD equal to NEW, overlapping spans)",
    Reason.copy_of_input: "the answer repeats its input",
    Reason.copy_of_passage: "the query copies its passage (the passage, or a verbatim run of 80% of its words)",
    Reason.too_long: "the answer is too long (a negative: 3x its caption + 40 chars; a query: max_query_words)",
    Reason.too_short: "the rationale is shorter than rationales.min_chars",
    Reason.type_mismatch: "the answer does not have its type's shape (an edit of another type, a query of another)",
    Reason.wrong_word_class: "the edit changes a word of another class than its type's (spaCy parse)",
    Reason.content_changed: "the paraphrase lost or added a noun phrase, or changed a number",
    Reason.no_answer: "the rationale reaches no answer of its kind",
    Reason.no_label: "the question has no gold answer and its samples no clear majority",
    Reason.no_positive: "no rationale of the question reached its label",
    Reason.duplicate_seed: "an earlier seed sample gave the same sentence",
    Reason.no_partner: "the other candidate of the sentence was rejected",
    Reason.no_score: "the judge unit of this pair or query failed (see its engine_crash or engine_timeout row)",
    Reason.unparsable_score: "the judge did not answer with one digit 0-5",
    Reason.judge_tie: "the judge scored both candidates the same",
    Reason.judge_positive_low: "the judge scored the positive below pairs.judge.positive_min",
    Reason.judge_negative_high: "the judge scored the negative above pairs.judge.negative_max",
    Reason.not_answerable: "the judge scored the query below retrieval.judge.min_score: its passage does not answer it",
    Reason.round_trip: "a training query whose own passage ranks below retrieval.mining.round_trip in its pool",
    Reason.no_negative: "every mined candidate of the query was dropped",
    Reason.fn_no_score: "the false-negative judge gave the candidate no parsable score",
    Reason.positive_aware: "the candidate is nearly as close to the query as its passage (mining.max_positive_ratio)",
    Reason.positive_out_of_band: "the positive is outside the surface band filters.<kind>.surface.positive",
    Reason.positive_meaning_lost: "the positive's cosine to its anchor is below semantic.positive_min",
    Reason.duplicate_of_published: "the row repeats a row an earlier release published",
    Reason.exact_duplicate: "the row repeats an earlier row of the dataset",
    Reason.near_duplicate: "the negative is a near copy of another negative of its anchor (dedup.near_threshold)",
    Reason.negative_out_of_band: "the negative is outside the surface band filters.<kind>.surface.negative",
    Reason.false_negative: "the negative means the same: cosine at or above semantic.false_negative, or fn_judge says "
    "it answers the query",
    Reason.above_max_score: "the negative's cosine to its anchor or query is above max_score (semantic, mining)",
    Reason.below_min_score: "the negative's cosine to its anchor is below semantic.min_score",
    Reason.absolute_margin: "the negative's cosine is within absolute_margin of the positive's (semantic, mining)",
    Reason.relative_margin: "the negative's cosine is within relative_margin x the positive's of it (semantic)",
    Reason.blind_balance: "dropped to balance the blind text-only scorers (filters.<kind>.blind)",
}


def meaning(code: str) -> str:
    """What a rejection reason code means (:data:`REASONS`); empty for a code this version does not define (a row
    written by an earlier version).

    >>> meaning("empty_caption")
    'the input text (caption, question, sentence, passage) is empty or whitespace'
    """
    return _MEANINGS.get(code, "")


_MEANINGS = {str(code.value): text for code, text in REASONS.items()}


@dataclass(frozen=True)
class Rejection:
    """A row that did not make it, with a reason code; written to ``rejected/``.

    ``stage`` (:class:`RejectStage`) says where it was rejected and ``reason`` (:class:`Reason`) why; a ``filter`` row
    names the filter (:class:`pipeline.filters.config.FilterName`) and ``score`` the score that dropped it.
    """

    stage: RejectStage
    reason: Reason
    detail: str = ""
    raw: str = ""
    source_id: str | None = None
    task: str | None = None
    file: str | None = None
    line: int | None = None
    field: str | None = None
    unit_key: str | None = None
    prompt_sha: str | None = None
    model: str | None = None
    seed: int | None = None
    filter: str | None = None
    score: float | None = None


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters of one request (mapped 1:1 onto engines' own objects)."""

    temperature: float
    top_p: float
    max_tokens: int
    n: int
    seed: int
    stop_at_newline: bool = True  # one-line answers (negatives, pairs); rationales span lines
    # Structured outputs a task asks for; engines that support them constrain decoding (vLLM's
    # structured outputs), the others ignore them: every task still parses its output strictly.
    choices: tuple[str, ...] = ()  # the answer is exactly one of these
    json_schema: str | None = None  # the answer is JSON matching this schema (a JSON string)


@dataclass(frozen=True)
class GenerationRequest:
    """Chat messages to complete; ``key`` ties the completion back to its unit."""

    key: str
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs
    sampling: Sampling


@dataclass(frozen=True)
class Completion:
    key: str
    texts: tuple[str, ...]
    tokens_in: int
    tokens_out: int
    latency_s: float
    finish_reasons: tuple[str, ...] = ()
    engine_s: float | None = None  # its share of its call's seconds on the replica (pipeline.engines.metered)
    accelerator: str | None = None  # what the replica runs on: cpu, "<GPU name> x<count>", api
    setup_s: float | None = None  # the part of engine_s the replica spent once for many calls (a prompt prefix's KV)


@dataclass(frozen=True)
class EngineFailure:
    """A request the engine could not complete: it crashed the engine when run alone (``engine_crash``) or ran
    past the deadline on two attempts (``engine_timeout``). Its unit becomes a rejected row."""

    key: str
    reason: Reason  # engine_crash | engine_timeout
    detail: str  # the error, and the attempts made


@dataclass(frozen=True)
class Unit(Generic[S]):
    """One unit of work: one source record (a caption, question, sentence, topic, judged pair) x one task."""

    key: str
    source: S
    task: str
    prompt_sha: str
    seed: int


@dataclass(frozen=True)
class Provenance:
    engine: str
    model: str
    prompt_sha: str
    mode: str
    temperature: float
    top_p: float
    max_tokens: int
    seed: int
    tokens_in: int
    tokens_out: int
    latency_s: float


@dataclass(frozen=True)
class RawResult:
    """What the LLM said for one unit, kept verbatim so validation can be re-run without LLM calls."""

    unit_key: str
    source_id: str
    source_text: str  # the unit's source text (``source.text``): a caption, question, sentence, topic or passage
    image_ref: str | None
    task: str
    texts: tuple[str, ...]
    finish_reasons: tuple[str, ...]  # per text: stop | newline | length
    provenance: Provenance
    code_version: str
    group: str | None = None  # the source's input.group_column value (absent in raw parts of older runs)
    engine_s: float | None = None  # engine-seconds the unit took on its replica (None: a part of an earlier version)
    accelerator: str | None = None  # the replica's accelerator: cpu, "<GPU name> x<count>", api
    setup_s: float | None = None  # of engine_s, the unit's share of one-time work (a prefix's KV, computed once)
