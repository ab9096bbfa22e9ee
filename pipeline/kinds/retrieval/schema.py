"""What a retrieval dataset is and how it is configured: its row (``kind.table`` writes it with
``SCHEMA``), its settings section (``retrieval:``) and its filter defaults (``filters.retrieval``).
The logic is in :mod:`pipeline.kinds.retrieval`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from pydantic import Field, field_validator

from pipeline.filters.config import BlindSection, FilterConfig, PropensitySection, SemanticSection, SurfaceSection
from pipeline.records import Provenance
from pipeline.settings import Section
from pipeline.shards.schema import PROVENANCE_FIELDS
from pipeline.text.mining import MiningConfig
from pipeline.text.queries import QueryType

PROMPTS = Path(__file__).resolve().parents[3] / "prompts" / "retrieval"


@dataclass(frozen=True)
class RetrievalRow:
    """One (query, positive passage, mined negative passage) triplet."""

    id: str
    query: str
    positive: str
    negative: str
    query_type: str
    pos_sim: float  # cosine (mining encoder) of query and positive
    neg_sim: float  # ... of query and negative
    neg_rank: int  # 1: the closest passage of the pool other than the positive
    judge_score: int  # the judge's 0-5 for (query, positive)
    fn_score: int | None  # the false-negative judge's 0-5 for (query, negative); None: not judged
    source_id: str  # the query's id (one trainer group)
    passage_id: str
    negative_id: str
    judge_model: str
    provenance: Provenance = field(repr=False)  # the query's generation
    surface_sim: float = float("nan")
    semantic_sim: float = float("nan")
    propensity: float = float("nan")
    weight: float = 1.0


# Query first: select_columns(["query", "positive", "negative"]) feeds sentence-transformers.
SCHEMA = pa.schema(
    [
        pa.field("query", pa.string()),
        pa.field("positive", pa.string()),
        pa.field("negative", pa.string()),
        pa.field("query_type", pa.string()),
        pa.field("pos_sim", pa.float32()),
        pa.field("neg_sim", pa.float32()),
        pa.field("neg_rank", pa.int32()),
        pa.field("judge_score", pa.int32()),
        pa.field("fn_score", pa.int32()),
        pa.field("id", pa.string()),
        pa.field("source_id", pa.string()),
        pa.field("passage_id", pa.string()),
        pa.field("negative_id", pa.string()),
        pa.field("judge_model", pa.string()),
        *PROVENANCE_FIELDS,
        pa.field("surface_sim", pa.float32()),
        pa.field("semantic_sim", pa.float32()),
        pa.field("propensity", pa.float32()),
        pa.field("weight", pa.float32()),
    ]
)


class RetrievalJudgeConfig(Section):
    """LLM-as-judge of (query, passage): 0-5, how well the passage answers the query (InPars filters its queries
    by the model's own score; here the same model rates them, greedy, one digit)."""

    min_score: int = Field(
        1,
        ge=0,
        le=5,
        description="Keep a query only when its own passage scores at least this. 1 rejects the queries a judge finds "
        "unrelated to their passage (0); the embedded SmolLM2-135M does not discriminate (it answers 1 to a query "
        "with its own passage and with a foreign one alike, docs/retrieval.md), so on the embedded default the judge "
        "only rejects unparsable scores. With a capable judge (vllm or openai engine) 3 is a stricter bar.",
    )
    temperature: float = Field(0.0, ge=0.0, description="0: greedy, one deterministic score per pair.")
    max_tokens: int = Field(4, gt=0, description="A score is one digit.")


class FalseNegativeJudgeConfig(Section):
    """The optional false-negative pass: the judge also rates the closest mined candidates against the query; a
    candidate it scores as answering the query is not a negative."""

    enabled: bool = Field(
        False,
        description="Judge the closest candidates too (one more LLM call per candidate; off "
        "by default for speed: mining's positive-aware rule already drops the likeliest ones).",
    )
    top: int = Field(
        4,
        ge=1,
        le=32,
        description="The closest this many candidates that passed the mining rules are "
        "judged (negatives are then picked from them, in order, then from the unjudged ones).",
    )
    max_score: int = Field(
        3,
        ge=0,
        le=5,
        description="Drop a candidate the judge scores at or above this (3: a "
        "passage that answers the query reasonably well is not its negative).",
    )


class RetrievalConfig(Section):
    """Retrieval triplets (InPars, Promptagator): per passage, queries of each type written by the LLM and judged
    answerable, then hard negatives mined from the same corpus (block) with positive-aware false-negative removal."""

    types: list[QueryType] = Field(
        default_factory=lambda: list(QueryType), description="Query types to write per passage."
    )
    max_query_words: int = Field(32, gt=0, description="Longer queries are rejected (too_long).")
    judge: RetrievalJudgeConfig = Field(default_factory=RetrievalJudgeConfig)
    fn_judge: FalseNegativeJudgeConfig = Field(default_factory=FalseNegativeJudgeConfig)
    mining: MiningConfig = Field(default_factory=MiningConfig)
    prompts_dir: Path = Field(PROMPTS, description="Folder of retrieval templates (one per query type, and judge).")

    @field_validator("types")
    @classmethod
    def _unique(cls, v: list[QueryType]) -> list[QueryType]:
        if not v:
            raise ValueError("expected at least one query type")
        return list(dict.fromkeys(v))


# Retrieval triplets: dedup only. A query shares few words with its passages, so no surface band means anything
# (negative or positive); the false-negative guard and the margins are the mining rules' job, applied to every
# candidate before it becomes a row (retrieval.mining, with the query's own positive as the reference); the judge
# decides whether a query fits its passage; a blind scorer comparing a query with a passage measures nothing; and
# mining picks negatives *by* their cosine below the positive's, so a propensity model of positive vs negative on that
# cosine separates them by construction: its weights would only echo the mining threshold.
FILTER_DEFAULTS = FilterConfig(
    surface=SurfaceSection(enabled=False),
    semantic=SemanticSection(enabled=False, false_negative=None, positive_min=None, false_negative_exempt=[]),
    blind=BlindSection(enabled=False),
    propensity=PropensitySection(enabled=False),
)
