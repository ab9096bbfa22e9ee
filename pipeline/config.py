"""The one typed run configuration: the shared sections (:mod:`pipeline.settings`) and one section per data kind.

Each kind in the registry (:data:`pipeline.kinds.KINDS`) declares its section class (``kind.section``, the
``<name>:`` mapping of a YAML file) and its filter defaults (``kind.filters``, under ``filters.<name>``); this module
puts them together, so a new kind adds its settings without editing a file outside ``pipeline/kinds/``. The result
is one pydantic model with one precedence (defaults < ``--config`` < ``CONTRASTGEN_*`` environment < flags): a typo
in any section is an error naming the field.

Code outside a kind sees a :class:`~pipeline.settings.BaseRunConfig` (to a type checker, ``RunConfig`` is that
class): a kind reads its own section with ``cfg.section(TheKindConfig)`` and the filter stage reads
``cfg.filters_for(kind.name)``, never an attribute by a kind's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, create_model, model_validator

from pipeline.kinds import KINDS
from pipeline.settings import (  # noqa: F401 (re-exported: the config's public names live here)
    BUNDLED_ENCODER_ID,
    Band,
    BaseRunConfig,
    BlindScorer,
    BlindSection,
    DedupSection,
    EngineConfig,
    FilterConfig,
    InputConfig,
    OutputConfig,
    PropensitySection,
    RayConfig,
    SamplingConfig,
    Section,
    SemanticSection,
    Settings,
    SurfaceSection,
    bundled_encoder,
    bundled_gguf,
    deep_merge,
    problem_lines,
    read_yaml,
    resolve,
)


class _KindChecks(BaseRunConfig):
    @model_validator(mode="after")
    def _each_kind(self) -> _KindChecks:
        problems = [p for kind in KINDS.values() for p in kind.settings_problems(self)]
        if problems:
            raise ValueError("; ".join(problems))
        return self


FiltersConfig = create_model(  # type: ignore[call-overload]  # fields from the registry
    "FiltersConfig",
    __base__=Section,
    __doc__="Filter settings per data kind (each kind's defaults: its ``filters``).",
    **{name: (FilterConfig, Field(default_factory=lambda k=k: k.filters)) for name, k in KINDS.items()},
)

if TYPE_CHECKING:
    RunConfig = BaseRunConfig
else:
    RunConfig = create_model(
        "RunConfig",
        __base__=_KindChecks,
        __doc__="Everything a run of any kind needs; saved resolved into the manifest and card.",
        **{name: (k.section, Field(default_factory=k.section)) for name, k in KINDS.items()},
        filters=(FiltersConfig, Field(default_factory=FiltersConfig)),
    )


def load_config(config_file: Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Resolve the run config with the one precedence; raise ConfigError listing every problem."""
    return resolve(RunConfig, config_file, overrides)
