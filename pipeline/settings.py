"""The settings mechanism and the run config's shared sections.

Precedence, written once: defaults < YAML file (``--config``) < environment (``CONTRASTGEN_*``,
nested with ``__``, e.g. ``CONTRASTGEN_SAMPLING__TEMPERATURE=0.9``) < command-line flags.
Every problem is reported together (:class:`~pipeline.errors.ConfigError`).

:class:`BaseRunConfig` holds the sections every kind shares (input, engine, sampling, output, ray). Each data kind
owns its own section and filter defaults (``pipeline/kinds/<name>/schema.py``); :mod:`pipeline.config` puts them
together into the one :class:`~pipeline.config.RunConfig` from the kinds registry, so adding a kind edits no file
here.
"""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    Field,
    ValidationError,
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
    PropensitySection,
    SemanticSection,
    SurfaceSection,
)

S = TypeVar("S", bound=Section)


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
    sample_rows: int | None = Field(
        None,
        gt=0,
        description="Use N valid input rows spread evenly over the input (every (rows/N)-th row), e.g. for a trial; "
        "`generate --estimate` sets it for its sample run.",
    )


class SamplingConfig(Section):
    temperature: float = Field(0.7, ge=0.0, description="0 means greedy.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(40, gt=0, description="New tokens per completion.")
    n: int = Field(2, ge=1, le=16, description="Samples per unit; the first valid one is kept.")
    seed: int = Field(0, description="Run seed; each unit derives its own seed from it and its key.")


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


class EstimateConfig(Section):
    """``generate --estimate``: the sample it runs before projecting the whole input's cost."""

    fraction: float = Field(
        0.01, gt=0.0, le=1.0, description="Share of the input rows the sample runs (--estimate-fraction)."
    )
    max_units: int = Field(
        500,
        gt=0,
        description="At most this many units in the sample's first stage (fewer input rows where a row makes many).",
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


class BaseRunConfig(Settings):
    """The sections every run shares; :class:`pipeline.config.RunConfig` adds one section per data kind (named as
    the kind) and ``filters`` (one :class:`FilterConfig` per kind). A kind reads its own sections through
    :meth:`section` and :meth:`filters_for`, never by attribute name."""

    model_config = SettingsConfigDict(env_prefix="CONTRASTGEN_")

    input: InputConfig = Field(default_factory=InputConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    estimate: EstimateConfig = Field(default_factory=EstimateConfig)

    def section(self, cls: type[S]) -> S:
        """The kind section of type ``cls`` (e.g. ``cfg.section(NegativesConfig)``); each kind's section type is
        its own, so the type names it."""
        found = [getattr(self, name) for name, f in type(self).model_fields.items() if f.annotation is cls]
        if len(found) != 1:
            raise TypeError(f"expected one section of type {cls.__name__} in the run config, found {len(found)}")
        return found[0]

    def filters_for(self, kind: str) -> FilterConfig:
        """The filter section of data kind ``kind`` (``filters.<kind>``)."""
        section = getattr(self, "filters", None)
        found = getattr(section, kind, None)
        if not isinstance(found, FilterConfig):
            raise TypeError(f"expected a filters.{kind} section in the run config, found {type(found).__name__}")
        return found

    @model_validator(mode="after")
    def _clients_serve_openai(self) -> BaseRunConfig:
        if self.ray.clients and self.engine.kind != "openai":
            raise ValueError(
                f"ray.clients: Ray Data client workers serve the openai engine, got engine.kind "
                f"{self.engine.kind!r} (its replicas are ray.workers). Fix: set ray.clients to 0, or use "
                "--engine openai against a served model"
            )
        return self


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
