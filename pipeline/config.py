"""The one typed run configuration.

Precedence, written once: defaults < YAML file (``--config``) < environment (``CONTRASTGEN_*``,
nested with ``__``, e.g. ``CONTRASTGEN_SAMPLING__TEMPERATURE=0.9``) < command-line flags.
Every problem is reported together (:class:`~pipeline.errors.ConfigError`).
"""

from __future__ import annotations

import contextvars
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from pipeline.engines.config import (  # noqa: F401 (re-exported)
    BUNDLED_ENCODER_ID,
    EngineConfig,
    RayConfig,
    Section,
    bundled_encoder,
    bundled_gguf,
)
from pipeline.errors import ConfigError
from pipeline.filters.config import (  # noqa: F401 (re-exported: the one run config's filter sections)
    Band,
    BlindScorer,
    BlindSection,
    DedupSection,
    FilterConfig,
    FiltersConfig,
    PropensitySection,
    SemanticSection,
    SurfaceSection,
)

REPO_PROMPTS = Path(__file__).resolve().parent.parent / "prompts" / "negatives"
REPO_RATIONALE_PROMPTS = REPO_PROMPTS.parent / "rationales"
REPO_PAIR_PROMPTS = REPO_PROMPTS.parent / "pairs"
REPO_RETRIEVAL_PROMPTS = REPO_PROMPTS.parent / "retrieval"


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


class InputConfig(Section):
    path: Path | None = Field(None, description="Captions file: .jsonl, .csv, .parquet, or a `datasets` folder.")
    format: Literal["auto", "jsonl", "csv", "parquet", "datasets"] = Field(
        "auto", description="Input format; auto picks by extension (a folder means a saved `datasets` dataset)."
    )
    id_column: str = Field("id", description="Column holding a stable caption id.")
    caption_column: str = Field("caption", description="Column holding the caption text.")
    image_column: str | None = Field(
        "image", description="Optional image reference column, passed through untouched as `image_ref`."
    )
    group_column: str | None = Field(
        None,
        description="Optional group column (e.g. an image id; COCO has five human captions an image): captions "
        "of one group are positives of each other in training, share a split, and are recorded as `group`.",
    )
    max_caption_chars: int = Field(
        2000, gt=0, description="Longer captions (or questions) are rejected (caption_too_long)."
    )
    question_column: str = Field("question", description="Rationales: column holding the question.")
    sentence_column: str = Field("sentence", description="Pairs: column holding the anchor sentence.")
    passage_column: str = Field(
        "passage", description="Retrieval: column holding the passage (id optional, as for sentences)."
    )
    answer_column: str | None = Field(
        "answer", description="Rationales: gold answer column (a value, or a solution ending in '#### x'); optional."
    )
    choices_column: str | None = Field(
        "choices", description="Rationales: multiple-choice options (a list, or {label: [...], text: [...]}); optional."
    )
    limit: int | None = Field(None, gt=0, description="Use only the first N valid captions.")


class SamplingConfig(Section):
    temperature: float = Field(0.7, ge=0.0, description="0 means greedy.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(40, gt=0, description="New tokens per completion.")
    n: int = Field(2, ge=1, le=16, description="Samples per unit; the first valid one is kept.")
    seed: int = Field(0, description="Run seed; each unit derives its own seed from it and its key.")


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
        REPO_PROMPTS, description="Folder of negative-caption templates (prompts/ is the only home of prompt text)."
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
    prompts_dir: Path = Field(REPO_RATIONALE_PROMPTS, description="Folder of rationale templates.")


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
    prompts_dir: Path = Field(REPO_PAIR_PROMPTS, description="Folder of pair templates.")

    @field_validator("entail", "contradict")
    @classmethod
    def _some(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("expected at least one instruction variant")
        return list(dict.fromkeys(v))


class QueryType(str, Enum):
    """Retrieval query types, each with its template ``prompts/retrieval/<type>.yaml`` and its own shape check
    (:data:`pipeline.kinds.retrieval.SHAPES`): InPars' and Promptagator's queries, in three styles."""

    keyword = "keyword"  # a web-search style query of a few words
    question = "question"  # a natural question the passage answers
    claim = "claim"  # a statement the passage supports, in other words (fact-checking style retrieval)


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


class MiningConfig(Section):
    """Hard negatives from the corpus (sentence-transformers' ``mine_hard_negatives``; NV-Retriever's positive-aware
    mining, Moreira et al. 2024): the passages closest to the query by cosine, skipping its own passage."""

    model: Path | None = Field(
        None, description="A sentence-transformers folder; default: the bundled all-MiniLM-L6-v2."
    )
    num_negatives: int = Field(3, ge=1, le=32, description="Negatives per query (one row each).")
    candidates: int = Field(
        10,
        ge=1,
        description="The closest this many passages are considered (mine_hard_negatives' "
        "range_max); fewer negatives are kept when the rules drop more.",
    )
    max_positive_ratio: float | None = Field(
        0.95,
        gt=0.0,
        le=1.0,
        description="NV-Retriever's TopK-PercPos: drop a candidate whose cosine to the query is above this fraction of "
        "the positive's (0.95 was the paper's best); none: off.",
    )
    absolute_margin: float | None = Field(
        None,
        description="mine_hard_negatives' absolute_margin: drop a candidate "
        "with cosine > cos(query, positive) - margin; none: off.",
    )
    max_score: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="mine_hard_negatives' max_score: drop a candidate with cosine above this; none: off.",
    )
    round_trip: int | None = Field(
        1,
        ge=1,
        description="Promptagator's round-trip consistency: keep a training query only when its own passage ranks in "
        "the top this many of its pool by cosine (1, the paper's K; a query that finds another passage first is vague "
        "or about something else, docs/retrieval.md); raise it for corpora with many near-duplicate passages; none: "
        "off. Test queries are exempt: filtered by the encoder that is then evaluated, the test split would hold only "
        "the queries that encoder already answers.",
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
    prompts_dir: Path = Field(
        REPO_RETRIEVAL_PROMPTS, description="Folder of retrieval templates (one per query type, and judge)."
    )

    @field_validator("types")
    @classmethod
    def _unique(cls, v: list[QueryType]) -> list[QueryType]:
        if not v:
            raise ValueError("expected at least one query type")
        return list(dict.fromkeys(v))


class OutputConfig(Section):
    dir: Path | None = Field(None, description="Output dataset directory.")
    rows_per_shard: int = Field(5000, gt=0, description="Rows per Arrow shard.")
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="Share of caption ids held out as test.")
    license: str = Field("cc-by-4.0", description="License written into the dataset card.")
    units_per_part: int | None = Field(
        None,
        gt=0,
        description="Units per raw part (the resume granularity and one "
        "engine call); default: enough to fill the engine twice, at least 64 "
        "(max(64, 2 x engine capacity / sampling.n): 64 embedded, 256 vllm).",
    )
    block_sources: int = Field(
        4096,
        gt=0,
        description="Input rows per block: a run plans, generates and finalizes a "
        "block of sources at a time, so its memory is bounded by a block, not by the dataset "
        "(the word-bigram blind proxy is fitted per block).",
    )
    overwrite: bool = Field(
        False,
        description="Write into a non-empty folder that is not a contrastgen dataset (files "
        "contrastgen did not write are still never replaced or deleted).",
    )


# (YAML file, base layer below it): the base is a saved config (a dataset's manifest) that a file refines.
_yaml_file: contextvars.ContextVar[tuple[Path | None, dict[str, Any]]] = contextvars.ContextVar(
    "yaml_file", default=(None, {})
)


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, mapping by mapping.

    >>> deep_merge({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}})
    {'a': {'x': 1, 'y': 3}, 'b': 1}
    """
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: expected a readable YAML mapping, got: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at top level, got {type(data).__name__}")
    return data


class YamlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field, field_name):  # pragma: no cover - unused by __call__
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path, base = _yaml_file.get()
        return deep_merge(base, read_yaml(path) if path is not None else {})


class Settings(BaseSettings):
    """The one precedence of every contrastgen config (run, train), written once here."""

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="forbid", frozen=True)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        # Later in the tuple = lower priority: CLI (init) > env > YAML file > defaults.
        return (init_settings, env_settings, YamlSource(settings_cls))


class RunConfig(Settings):
    """Everything a negatives run needs; saved resolved into the manifest and card."""

    model_config = SettingsConfigDict(env_prefix="CONTRASTGEN_")

    input: InputConfig = Field(default_factory=InputConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    negatives: NegativesConfig = Field(default_factory=NegativesConfig)
    rationales: RationalesConfig = Field(default_factory=RationalesConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    filters: FiltersConfig = Field(default_factory=FiltersConfig)

    @model_validator(mode="after")
    def _known_types(self) -> RunConfig:
        unknown = sorted(set(self.filters.negatives.semantic.false_negative_exempt) - {t.value for t in NegType})
        if unknown:
            raise ValueError(
                f"filters.negatives.semantic.false_negative_exempt: expected negative types from "
                f"{[t.value for t in NegType]}, got unknown {unknown}"
            )
        if self.ray.clients and self.engine.kind != "openai":
            raise ValueError(
                f"ray.clients: Ray Data client workers serve the openai engine, got engine.kind "
                f"{self.engine.kind!r} (its replicas are ray.workers). Fix: set ray.clients to 0, or use "
                "--engine openai against a served model"
            )
        return self


def load_config(config_file: Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Resolve the run config with the one precedence; raise ConfigError listing every problem."""
    return resolve(RunConfig, config_file, overrides)


def problem_lines(exc: ValidationError) -> list[str]:
    """One ``  - field.path: message (got value)`` line per validation problem."""
    return [
        f"  - {'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r})" for err in exc.errors()
    ]


def resolve(
    cls: type[Settings], config_file: Path | None, overrides: dict[str, Any] | None, base: dict[str, Any] | None = None
):
    """Build settings ``cls`` from defaults < ``base`` (a saved config) < YAML file < environment < ``overrides``
    (the CLI)."""
    token = _yaml_file.set((config_file, base or {}))
    try:
        return cls(**(overrides or {}))
    except ValidationError as exc:
        lines = problem_lines(exc)
        src = f" (file {config_file})" if config_file else ""
        raise ConfigError(
            f"invalid configuration{src}, {len(lines)} problem(s):\n"
            + "\n".join(lines)
            + "\nFix the named fields in the YAML file, the CONTRASTGEN_* environment, or the flags."
        ) from None
    finally:
        _yaml_file.reset(token)
