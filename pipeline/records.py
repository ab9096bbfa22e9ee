"""Typed records at every stage boundary: inputs -> units -> completions -> raw results -> rows.

Arrow appears only at the writers (``pipeline/shards``), against explicit schemas.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CaptionRecord:
    """One valid input caption."""

    id: str
    caption: str
    image_ref: str | None = None
    file: str = ""
    line: int = 0


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
class Unit:
    """One unit of work: one input caption x one task (a negative type or `paraphrase`)."""

    key: str
    source: CaptionRecord
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
    caption: str
    image_ref: str | None
    task: str
    texts: tuple[str, ...]
    finish_reasons: tuple[str, ...]  # per text: stop | newline | length
    provenance: Provenance
    code_version: str


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
