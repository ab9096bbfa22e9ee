"""The rationales kind's settings (``rationales:``) and its filter defaults (``filters.rationales``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from pipeline.filters.config import BlindSection, FilterConfig, SemanticSection, SurfaceSection
from pipeline.settings import Section

PROMPTS = Path(__file__).resolve().parents[2] / "prompts" / "rationales"


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
FILTERS = FilterConfig(
    surface=SurfaceSection(enabled=False),
    semantic=SemanticSection(false_negative=None, positive_min=None, false_negative_exempt=[]),
    blind=BlindSection(enabled=False),
)
