"""What a rationales dataset is and how it is configured: its row (``kind.table`` writes it with
``SCHEMA``), its settings section (``rationales:``) and its filter defaults (``filters.rationales``).
The logic is in :mod:`pipeline.kinds.rationales`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import Field

from pipeline.filters.config import BlindSection, FilterConfig, SemanticSection, SurfaceSection
from pipeline.records import Provenance
from pipeline.settings import Section
from pipeline.shards.schema import PROVENANCE_FIELDS

PROMPTS = Path(__file__).resolve().parents[3] / "prompts" / "rationales"


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


# Question as the anchor: select_columns(["question", "positive", "negative"]) feeds sentence-transformers.
SCHEMA = pa.schema(
    [
        pa.field("question", pa.string()),
        pa.field("positive", pa.string()),
        pa.field("negative", pa.string()),
        pa.field("neg_source", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("label_source", pa.string()),
        pa.field("pos_answer", pa.string()),
        pa.field("neg_answer", pa.string()),
        pa.field("votes_for_label", pa.int32()),
        pa.field("votes_total", pa.int32()),
        pa.field("pos_quality", pa.float32()),
        pa.field("neg_quality", pa.float32()),
        pa.field("id", pa.string()),
        pa.field("source_id", pa.string()),
        pa.field("pos_seed", pa.int64()),
        *PROVENANCE_FIELDS,
        pa.field("surface_sim", pa.float32()),
        pa.field("semantic_sim", pa.float32()),
        pa.field("propensity", pa.float32()),
        pa.field("weight", pa.float32()),
    ]
)


class AdversarialConfig(Section):
    """Self-adversarial negatives (GRACE-style): a weaker sampling setting of the same model whose wrong
    rationales are extra negatives, labelled ``neg_source = adversarial``."""

    enabled: bool = Field(True, description="Also sample rationales at the weaker setting.")
    n: int = Field(2, ge=1, le=16, description="Rationales per question at the weaker setting.")
    temperature: float = Field(
        1.2,
        gt=0.0,
        description="Higher temperature: less careful reasoning. 1.2, not 1.5: at 1.5 every SmolLM2 rationale was "
        "word salad cut at max_tokens (docs/rationales.md); at 1.2 they read as reasoning and are mostly wrong.",
    )
    top_p: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="Nucleus mass at the weaker setting: the cut keeps a hot small model's rationales readable "
        "(at top_p 1.0 SmolLM2 at temperature 1.5 writes word salad that never reaches an answer).",
    )


class RationalesConfig(Section):
    """Contrastive rationales (QCRD, GRACE): k sampled chains of thought per question, split into positives and
    negatives by the gold answer (or the self-consistency majority when there is none)."""

    k: int = Field(5, ge=1, le=16, description="Rationales sampled per question (each with its own seed).")
    temperature: float = Field(0.7, ge=0.0, description="Sampling temperature of the k rationales.")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(
        160, gt=0, description="New tokens per rationale; a rationale cut here is rejected (truncated)."
    )
    answer_kind: Literal["auto", "number", "choice"] = Field(
        "auto", description="How final answers are read: auto picks choice when a row has choices, else number."
    )
    min_chars: int = Field(20, ge=0, description="Shorter rationales are rejected (too_short).")
    adversarial: AdversarialConfig = Field(default_factory=AdversarialConfig)
    prompts_dir: Path = Field(PROMPTS, description="Folder of rationale templates.")


# Rationales are long and share little surface with their question: dedup and propensity only.
FILTER_DEFAULTS = FilterConfig(
    surface=SurfaceSection(enabled=False),
    semantic=SemanticSection(false_negative=None, positive_min=None, false_negative_exempt=[]),
    blind=BlindSection(enabled=False),
)
