"""``contrastgen deploy``: Prefect deployments of the generate flow (any kind), on cron or interval schedules, from a
run file.

Run file (YAML)::

    deployments:
      - name: nightly-negatives       # deployment name (of the flow contrastgen-generate; tagged with the kind)
        kind: negatives               # a registered kind: negatives | rationales | pairs
        cron: "0 2 * * *"             # or `interval: 3600` (seconds); both may be omitted (run by hand only)
        config: runs/negatives.yaml   # a run config (as --config); optional
        run: {output: {dir: /data/negatives}}  # inline run settings over `config`; optional

Each entry's run config is resolved now with the usual precedence (defaults < config file < ``run:`` <
``CONTRASTGEN_*`` env) and preflighted, and the resolved config becomes the deployment's parameters (visible
in the Prefect UI; every scheduled run uses exactly it). ``prefect.serve`` then registers the deployments
with the Prefect API and runs their scheduled and hand-triggered runs in this process until stopped.
Schedules live in a Prefect server: without a configured API URL the command refuses with how to get one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.config import RunConfig, deep_merge, problem_lines, read_yaml, resolve
from pipeline.errors import ConfigError, ContrastgenError
from pipeline.kinds import KINDS
from pipeline.run.generate import preflight

NO_API = (
    "schedules live in a Prefect server, and no Prefect API is configured (PREFECT_API_URL is unset). "
    "Fix: start one with `prefect server start` (it listens on http://127.0.0.1:4200), then "
    "`export PREFECT_API_URL=http://127.0.0.1:4200/api` (or `prefect config set PREFECT_API_URL=...`), "
    "or point PREFECT_API_URL at Prefect Cloud or your team's server; then rerun `contrastgen deploy`."
)


class DeploymentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: str
    cron: str | None = None
    interval: float | None = Field(None, gt=0, description="Seconds between runs.")
    config: Path | None = None
    run: dict[str, Any] = Field(default_factory=dict)
    description: str | None = None

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in KINDS:
            raise ValueError(f"expected one of {sorted(KINDS)}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _one_schedule(self) -> DeploymentSpec:
        if self.cron and self.interval:
            raise ValueError("expected `cron` or `interval`, got both")
        return self


class RunFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deployments: list[DeploymentSpec] = Field(min_length=1)


@dataclass
class Planned:
    spec: DeploymentSpec
    cfg: RunConfig


def read_run_file(path: Path) -> list[Planned]:
    """Every deployment of the run file with its resolved, preflighted run config (all problems at once)."""
    try:
        run_file = RunFile.model_validate(read_yaml(path))
    except ValidationError as exc:
        lines = problem_lines(exc)
        raise ConfigError(
            f"{path}: invalid run file, {len(lines)} problem(s):\n"
            + "\n".join(lines)
            + "\nFix: see `contrastgen deploy --help` for the layout"
        ) from None
    out = []
    for spec in run_file.deployments:
        config = spec.config if spec.config is None or spec.config.is_absolute() else path.parent / spec.config
        cfg = resolve(RunConfig, None, None, base=deep_merge(read_yaml(config) if config else {}, spec.run))
        preflight(KINDS[spec.kind], cfg)
        out.append(Planned(spec, _absolute(cfg)))
    names = [p.spec.name for p in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: expected distinct deployment names, got {names}")
    return out


def _absolute(cfg: RunConfig) -> RunConfig:
    """Input and output paths made absolute now: scheduled runs may start in another working directory."""
    data = cfg.model_dump(mode="json")
    for section, key in (("input", "path"), ("output", "dir")):
        if data[section][key]:
            data[section][key] = str(Path(data[section][key]).resolve())
    return RunConfig.model_validate(data)


def api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def deployments(planned: list[Planned]) -> list:
    """Prefect ``RunnerDeployment`` objects of the one generate flow (one run at a time per deployment: runs share
    an output folder)."""
    from flows.generate import generate_flow

    out = []
    for p in planned:
        out.append(
            generate_flow.to_deployment(
                name=p.spec.name,
                cron=p.spec.cron,
                interval=timedelta(seconds=p.spec.interval) if p.spec.interval else None,
                parameters={"kind": p.spec.kind, "config": p.cfg.model_dump(mode="json")},
                tags=["contrastgen", p.spec.kind],
                description=p.spec.description or f"contrastgen {p.spec.kind} into {p.cfg.output.dir}",
                concurrency_limit=1,
            )
        )
    return out


def deploy(path: Path) -> None:
    """Register the run file's deployments and serve them until interrupted."""
    planned = read_run_file(path)
    if not api_url():
        raise ContrastgenError(NO_API)
    from prefect import serve

    serve(*deployments(planned), print_starting_message=True)
