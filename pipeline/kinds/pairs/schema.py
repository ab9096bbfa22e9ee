"""What a pairs dataset is and how it is configured: its row (``kind.table`` writes it with
``SCHEMA``), its settings section (``pairs:``) and its filter defaults (``filters.pairs``).
The logic is in :mod:`pipeline.kinds.pairs`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from pydantic import Field, field_validator

from pipeline.filters.config import Band, BlindSection, FilterConfig, SemanticSection, SurfaceSection
from pipeline.records import Provenance
from pipeline.settings import Section
from pipeline.shards.schema import PROVENANCE_FIELDS

PROMPTS = Path(__file__).resolve().parents[3] / "prompts" / "pairs"


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


# Anchor first: select_columns(["anchor", "positive", "negative"]) feeds sentence-transformers.
SCHEMA = pa.schema(
    [
        pa.field("anchor", pa.string()),
        pa.field("positive", pa.string()),
        pa.field("negative", pa.string()),
        pa.field("pos_score", pa.int32()),
        pa.field("neg_score", pa.int32()),
        pa.field("swapped", pa.bool_()),
        pa.field("pos_instruction", pa.string()),
        pa.field("neg_instruction", pa.string()),
        pa.field("id", pa.string()),
        pa.field("source_id", pa.string()),
        pa.field("judge_model", pa.string()),
        *PROVENANCE_FIELDS,
        pa.field("surface_sim", pa.float32()),
        pa.field("semantic_sim", pa.float32()),
        pa.field("propensity", pa.float32()),
        pa.field("weight", pa.float32()),
    ]
)


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
FILTER_DEFAULTS = FilterConfig(
    surface=SurfaceSection(negative=Band(low=0.0, high=1.0)),
    semantic=SemanticSection(false_negative_exempt=[]),
    blind=BlindSection(enabled=False),
)
