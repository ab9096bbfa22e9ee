"""What a negatives dataset is and how it is configured: its row (``kind.table`` writes it with
``SCHEMA``), its settings section (``negatives:``) and its filter defaults (``filters.negatives``).
The logic is in :mod:`pipeline.kinds.negatives`."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import Field, field_validator

from pipeline.filters.config import FilterConfig
from pipeline.records import Provenance
from pipeline.settings import Section
from pipeline.shards.schema import PROVENANCE_FIELDS

PROMPTS = Path(__file__).resolve().parents[3] / "prompts" / "negatives"


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


# Ordered so that select_columns(["caption", "positive", "negative"]) feeds sentence-transformers.
SCHEMA = pa.schema(
    [
        pa.field("caption", pa.string()),
        pa.field("positive", pa.string()),
        pa.field("negative", pa.string()),
        pa.field("neg_type", pa.string()),
        pa.field("id", pa.string()),
        pa.field("source_id", pa.string()),
        pa.field("image_ref", pa.string()),
        pa.field("group", pa.string()),
        pa.field("surface_sim", pa.float32()),
        pa.field("edit", pa.string()),
        pa.field("positive_prompt_sha", pa.string()),
        *PROVENANCE_FIELDS,
        pa.field("semantic_sim", pa.float32()),
        pa.field("propensity", pa.float32()),
        pa.field("weight", pa.float32()),
    ]
)


class NegType(str, Enum):
    """Negative caption types: DeGLA's five plus SugarCrepe's replace_rel, add_obj, add_att."""

    reshuffle_order = "reshuffle_order"
    swap_obj = "swap_obj"
    swap_att = "swap_att"
    replace_att = "replace_att"
    replace_obj = "replace_obj"
    replace_rel = "replace_rel"
    add_obj = "add_obj"
    add_att = "add_att"


class NegativesConfig(Section):
    types: list[NegType] = Field(default_factory=lambda: list(NegType), description="Negative types to make.")
    paraphrase: bool = Field(True, description="Also make one paraphrase positive per caption.")
    paraphrase_candidates: int | None = Field(
        None,
        ge=1,
        le=16,
        description="Paraphrase samples per caption, chosen among (unset: sampling.n samples, the "
        "first valid one kept). The valid ones that keep the caption's noun phrases and numbers are ordered least "
        "surface-similar first and the filter stage "
        "keeps the first inside the positive's band and embedding floor (pipeline/text/paraphrase.py); the others' "
        "failures go to rejected/ as stage `candidate`.",
    )
    mode: Literal["edit", "rewrite"] = Field(
        "edit",
        description="edit: the model names the edit (spans) and code applies it; rewrite: the model "
        "writes the whole negative. bench/yields.py measures both; edit wins on SmolLM2.",
    )
    prompts_dir: Path = Field(
        PROMPTS, description="Folder of negative-caption templates (prompts/ is the only home of prompt text)."
    )
    word_class: bool = Field(
        True,
        description="Reject an edit that changes the wrong kind of word for its type (a swap_att that swaps nouns), "
        "by a spaCy parse of the caption (pipeline/text/word_class.py); reason wrong_word_class.",
    )

    @field_validator("types")
    @classmethod
    def _unique(cls, v: list[NegType]) -> list[NegType]:
        if not v:
            raise ValueError("expected at least one negative type")
        return list(dict.fromkeys(v))


# Negatives keep every filter at its default: the surface bands and the semantic guard were chosen on them.
FILTER_DEFAULTS = FilterConfig()
