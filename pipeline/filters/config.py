"""Filter settings, one :class:`FilterConfig` per data kind under ``filters.<kind>`` of the run config
(:mod:`pipeline.config` re-exports them): beside the filters they configure."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pipeline.engines.config import Section
from pipeline.filters.surface import Scorer
from pipeline.records import StrCode


class FilterName(StrCode):
    """What dropped a valid row: the ``filter`` column of a rejected ``filter`` row and the steps of the filter
    funnel (meanings in :data:`FILTERS`). dedup to propensity are the sections of :class:`FilterConfig`."""

    positives = "positives"
    dedup = "dedup"
    surface = "surface"
    semantic = "semantic"
    blind = "blind"
    propensity = "propensity"
    mining = "mining"
    fn_judge = "fn_judge"


FILTERS: dict[FilterName, str] = {
    FilterName.positives: "the funnel's first step, each anchor's positive: a dropped one names surface or semantic",
    FilterName.dedup: "exact duplicates across the dataset and near duplicates within a group",
    FilterName.surface: "the surface band: a negative stays lexically close to its anchor, a positive moves away",
    FilterName.semantic: "embedding rules: the false-negative guard, the score bounds and margins, a positive's floor",
    FilterName.blind: "balancing against blind text-only scorers (on the configured splits)",
    FilterName.propensity: "inverse-propensity weights of the kept rows (it drops no row)",
    FilterName.mining: "retrieval: the mining rules a candidate hard negative must pass (retrieval.mining)",
    FilterName.fn_judge: "retrieval: the false-negative judge of the closest candidates (retrieval.fn_judge)",
}


class BlindScorer(str, Enum):
    """Text-only scorers that never see an image (SugarCrepe's "blind" models)."""

    lm_loglik = "lm_loglik"  # mean token log-probability under the embedded LM (or engine.model_path)
    bigram = "bigram"  # grammaticality proxy: a word-bigram LM fitted, cross-fitted, on the run's own captions


class Band(Section):
    low: float = Field(0.0, ge=0.0, le=1.0, description="Lowest score kept (inclusive).")
    high: float = Field(1.0, ge=0.0, le=1.0, description="Highest score kept (inclusive).")

    @model_validator(mode="after")
    def _ordered(self) -> Band:
        if self.low > self.high:
            raise ValueError(f"expected low <= high, got low={self.low} > high={self.high}")
        return self


class DedupSection(Section):
    enabled: bool = Field(
        True, description="Drop exact duplicates across the dataset and near duplicates within a group."
    )
    near_threshold: float | None = Field(
        0.95,
        gt=0.0,
        le=1.0,
        description="rapidfuzz ratio (0-1) of two normalised negatives of one anchor at or above which the later "
        "one is a near duplicate; none: exact duplicates only.",
    )


class SurfaceSection(Section):
    enabled: bool = True
    scorer: Scorer = Field(
        "ratio",
        description="rapidfuzz scorer of the bands (ratio, token_sort_ratio, token_set_ratio, word_levenshtein).",
    )
    negative: Band = Field(
        default_factory=lambda: Band(low=0.4, high=1.0),
        description="A negative must stay lexically close to its anchor: its score must lie in this band.",
    )
    positive: Band = Field(
        default_factory=lambda: Band(low=0.0, high=0.98),
        description="A positive must move away from its anchor: its score must lie in this band (0.98 drops "
        "near-verbatim copies; 0.95 would drop 23% of SmolLM2's paraphrases, docs/filters.md).",
    )


class SemanticSection(Section):
    enabled: bool = True
    model: Path | None = Field(
        None, description="A sentence-transformers folder; default: the bundled all-MiniLM-L6-v2."
    )
    batch_size: int = Field(128, gt=0)
    false_negative: float | None = Field(
        0.95,
        gt=0.0,
        le=1.0,
        description="Drop a negative whose cosine to its anchor is at or above this (same meaning).",
    )
    max_score: float | None = Field(
        None, ge=-1.0, le=1.0, description="mine_hard_negatives' max_score: drop cosine above."
    )
    min_score: float | None = Field(
        None, ge=-1.0, le=1.0, description="mine_hard_negatives' min_score: drop cosine below."
    )
    absolute_margin: float | None = Field(
        None, description="Drop a negative with cosine > cos(anchor, positive) - margin."
    )
    relative_margin: float | None = Field(
        None, ge=0.0, le=1.0, description="Drop a negative with cosine > cos(anchor, positive) * (1 - margin)."
    )
    false_negative_exempt: list[str] = Field(
        default_factory=lambda: ["reshuffle_order", "swap_obj", "swap_att", "add_obj", "add_att"],
        description="Types (strata) the false-negative guard skips. A permutation of the anchor's words embeds "
        "almost identically in a bag-of-words-like encoder (the weakness the data targets), and one added word "
        "moves it very little, so for these types the cosine says nothing about a change of meaning; the "
        "structural type check already proved the order changed or words were added.",
    )
    positive_min: float | None = Field(
        0.5, ge=-1.0, le=1.0, description="Drop a positive whose cosine to its anchor is below this (meaning lost)."
    )
    cache_dir: Path | None = Field(
        None,
        description="Per-text score cache (embeddings, LM scores); default $CONTRASTGEN_CACHE or ~/.cache/contrastgen.",
    )


class PropensitySection(Section):
    enabled: bool = Field(True, description="Write propensity and inverse-propensity `weight` columns (DebCSE).")
    clip: float = Field(
        0.05, gt=0.0, lt=0.5, description="Propensities are clipped to [clip, 1 - clip] before inverting."
    )
    folds: int = Field(5, ge=2, description="Cross-fitting folds (each row is scored by a model that never saw it).")


class BlindSection(Section):
    enabled: bool = Field(
        True, description="Balance negatives so that blind text-only scorers pick the anchor about half the time."
    )
    scorers: list[BlindScorer] = Field(default_factory=lambda: list(BlindScorer))
    splits: list[Literal["train", "test"]] = Field(
        default_factory=list,
        description="Splits to balance; default none: the rates are measured and reported, no row is dropped. "
        "With SmolLM2's negatives, balancing keeps about a quarter of a split and 1 in 6 swap negatives "
        "(docs/results/filters.md); [test] makes evaluation immune to fluency cues on large runs.",
    )
    bins: int = Field(
        2, ge=1, le=20, description="Bins of |score gap| per scorer (quantiles); cells are balanced jointly."
    )
    max_rate: float = Field(
        0.54,
        ge=0.5,
        lt=1.0,
        description="Largest share of kept rows any blind scorer may get right (0.5: exact balance, fewest rows kept).",
    )
    per_type: bool = Field(True, description="Balance each negative type on its own (SugarCrepe does, per category).")
    lm_model: Path | None = Field(
        None, description="LM of the lm_loglik scorer (.gguf or transformers folder); default: engine.model_path."
    )
    lm_batch_size: int = Field(64, gt=0)

    @model_validator(mode="after")
    def _scorers(self) -> BlindSection:
        if self.enabled and not self.scorers:
            raise ValueError("expected at least one blind scorer when blind.enabled is true")
        return self


class FilterConfig(Section):
    """The filters of one data kind, applied in this order: dedup, surface, semantic, blind; then propensity.

    A section with ``enabled: false`` drops nothing; its scores are still written where they are columns.
    """

    dedup: DedupSection = Field(default_factory=DedupSection)
    surface: SurfaceSection = Field(default_factory=SurfaceSection)
    semantic: SemanticSection = Field(default_factory=SemanticSection)
    blind: BlindSection = Field(default_factory=BlindSection)
    propensity: PropensitySection = Field(default_factory=PropensitySection)
