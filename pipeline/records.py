"""Typed records at every stage boundary: inputs -> units -> completions -> raw results -> rows.

Arrow appears only at the writers (``pipeline/shards``), against explicit schemas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Rejection:
    """A row that did not make it, with a reason code; written to ``rejected/``.

    ``stage`` is ``input`` (bad input row), ``generation`` (output failed validation) or ``filter`` (a valid
    row the filter stage dropped: ``filter`` names the filter, ``score`` the score that dropped it).
    """

    stage: str
    reason: str
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


@dataclass(frozen=True)
class EngineFailure:
    """A request the engine could not complete: it crashed the engine when run alone (``engine_crash``) or ran
    past the deadline on two attempts (``engine_timeout``). Its unit becomes a rejected row."""

    key: str
    reason: str  # engine_crash | engine_timeout
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


@dataclass(frozen=True)
class NegativeRow:
    """One kept negative: anchor caption, its paraphrase positive, a typed negative."""

    id: str
    caption: str
    positive: str | None
    negative: str
    neg_type: str
    source_id: str
    image_ref: str | None
    surface_sim: float
    edit: str
    positive_prompt_sha: str | None
    provenance: Provenance = field(repr=False)
    semantic_sim: float = float("nan")  # cosine of caption and negative embeddings
    propensity: float = float("nan")  # P(positive | surface and semantic features of the pair), cross-fitted
    weight: float = 1.0  # inverse-propensity weight of the negative, self-normalised (the trainer reads it)
    group: str | None = None  # input.group_column: the captions of a group are positives of each other
    positive_alternatives: tuple[str, ...] = ()  # the other valid paraphrase candidates, best first (not a column:
    # the filter stage takes the first of positive + these inside its band and floor)


@dataclass(frozen=True)
class RationaleRow:
    """One contrastive pair of rationales for a question: a positive (reaches the label) and a negative."""

    id: str
    question: str
    positive: str
    negative: str
    neg_source: str  # sampled_wrong | adversarial
    answer: str  # the label the rationales were judged against
    label_source: str  # gold | majority (no gold answer: the self-consistency vote is the label)
    pos_answer: str
    neg_answer: str
    votes_for_label: int  # sampled rationales whose answer is the label
    votes_total: int  # sampled rationales with a parsable answer
    pos_quality: float
    neg_quality: float
    source_id: str
    pos_seed: int
    provenance: Provenance = field(repr=False)  # the negative's
    surface_sim: float = float("nan")
    semantic_sim: float = float("nan")
    propensity: float = float("nan")
    weight: float = 1.0


@dataclass(frozen=True)
class PairRow:
    """One synthetic triplet: an anchor sentence, an entailed positive and a contradicting hard negative."""

    id: str
    anchor: str
    positive: str
    negative: str
    pos_score: int  # the judge's 0-5 similarity of (anchor, positive)
    neg_score: int
    swapped: bool  # the judge rated the "contradiction" closer: roles swapped
    pos_instruction: str  # instruction variant that produced the positive
    neg_instruction: str
    source_id: str
    judge_model: str
    provenance: Provenance = field(repr=False)  # the negative's generation
    surface_sim: float = float("nan")
    semantic_sim: float = float("nan")
    propensity: float = float("nan")
    weight: float = 1.0
