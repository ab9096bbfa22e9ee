"""The pairs kind's settings (``pairs:``) and its filter defaults (``filters.pairs``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from pipeline.filters.config import Band, BlindSection, FilterConfig, SemanticSection, SurfaceSection
from pipeline.settings import Section

PROMPTS = Path(__file__).resolve().parents[2] / "prompts" / "pairs"


class JudgeConfig(Section):
    """LLM-as-judge of (sentence, candidate) similarity on the STS scale 0-5 (SynCSE, MultiCSR)."""

    positive_min: int = Field(3, ge=0, le=5, description="Keep a pair only when its positive scores at least this.")
    negative_max: int = Field(
        3, ge=0, le=5, description="... and its negative scores at most this (and lower than the positive)."
    )
    temperature: float = Field(0.0, ge=0.0, description="0: greedy, one deterministic score per candidate.")
    max_tokens: int = Field(4, gt=0, description="A score is one digit.")


class PairsConfig(Section):
    """Synthetic sentence pairs (SynCSE, MultiCSR): per sentence an entailment positive and a contradiction
    hard negative, each from an instruction variant picked per row, then judged 0-5 by the same model."""

    entail: list[str] = Field(
        default_factory=lambda: ["entail_rewrite", "entail_infer"],
        description="Instruction variants (files in prompts_dir) for positives; one is picked per row by hash.",
    )
    contradict: list[str] = Field(
        default_factory=lambda: ["contradict_negate", "contradict_swap"],
        description="Instruction variants for hard negatives; one is picked per row by hash.",
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    topics: list[str] = Field(
        default_factory=list,
        description="From-scratch mode (no --input): seed sentences are generated for these topics first.",
    )
    seeds_per_topic: int = Field(
        8, ge=1, le=16, description="From-scratch mode: sentences sampled per topic (one seed each)."
    )
    prompts_dir: Path = Field(PROMPTS, description="Folder of pair templates.")

    @field_validator("entail", "contradict")
    @classmethod
    def _some(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("expected at least one instruction variant")
        return list(dict.fromkeys(v))


# Sentence pairs: a contradiction need not stay lexically close (no negative band), a positive must still move away;
# the semantic guard stays on for every row (a "contradiction" that means the same is a false negative).
FILTERS = FilterConfig(
    surface=SurfaceSection(negative=Band(low=0.0, high=1.0)),
    semantic=SemanticSection(false_negative_exempt=[]),
    blind=BlindSection(enabled=False),
)
