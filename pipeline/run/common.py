"""The run's records and its generation step: phase timing, the summary, committing generated parts."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pipeline import __version__
from pipeline.engines.finish import check_finish_reasons
from pipeline.engines.pool import PartEngine
from pipeline.records import EngineFailure, GenerationRequest, Provenance, RawResult, Rejection, RejectStage, Unit
from pipeline.run.store import RunStore
from pipeline.shards.writer import ShardInfo


@dataclass
class Timing:
    """Wall-clock seconds of a run's phases: planning (inputs read, units keyed, the store checked), engine start
    (actors up, model loaded), generation, and finalize (the flow adds it to the summary it returns)."""

    plan_seconds: float = 0.0
    startup_seconds: float = 0.0
    generation_seconds: float = 0.0
    finalize_seconds: float = 0.0

    @contextmanager
    def measure(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, phase, round(getattr(self, phase) + time.perf_counter() - start, 3))


@dataclass
class Summary:
    out: str
    inputs: int
    input_rejected: int
    units: int
    generated: int
    reused: int
    kept: int
    rejected: int
    positives: int  # negatives: paraphrases kept; rationales: distinct positive rationales in rows
    filtered: int = 0  # valid rows (negatives and positives) the filter stage dropped
    splits: dict[str, int] = field(default_factory=dict)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    startup_seconds: float = 0.0
    generation_seconds: float = 0.0
    tokens_out: int = 0
    plan_seconds: float = 0.0
    empty: str = ""  # why the dataset has no row (empty input, every row rejected); "" when it has rows
    cost: dict[str, Any] = field(default_factory=dict)  # tokens, engine-seconds, money: pipeline.run.cost.cost_report

    def __post_init__(self) -> None:
        if not self.kept and not self.empty:
            self.empty = (
                f"the dataset has no row: {self.inputs} input rows ({self.input_rejected} rejected), "
                f"{self.units} units, {self.rejected} outputs rejected, {self.filtered} dropped by filters; "
                "rejected/ holds each reason"
            )


def commit_part(
    pool: PartEngine,
    index: int,
    units: list[Unit],
    requests: list[GenerationRequest],
    modes: list[str],
    store: RunStore,
    seen: Callable[[list[RawResult], list[Rejection]], None] | None = None,
) -> ShardInfo | None:
    """Run ``requests`` (one per unit) on the pool and commit the results as one atomic raw part. Provenance
    records each request's own sampling (a kind may sample its tasks differently). Units the engine could not
    complete (a poison request, a deadline missed twice) are committed first as failures with their reason:
    they become rejected rows, and the rest of the part is kept. ``seen`` gets the committed results and
    failures (live progress). Returns None when no unit completed."""
    outcomes = pool.generate(index, requests)
    results, failures = [], []
    for u, req, mode, c in zip(units, requests, modes, outcomes, strict=True):
        if c.key != u.key:
            raise RuntimeError(f"engine returned completion {c.key} for unit {u.key}: order must be kept")
        if isinstance(c, EngineFailure):
            failures.append(
                Rejection(
                    stage=RejectStage.generation,
                    reason=c.reason,
                    detail=c.detail,
                    source_id=u.source.id,
                    task=u.task,
                    unit_key=u.key,
                    prompt_sha=u.prompt_sha,
                    model=pool.model_id,
                    seed=u.seed,
                )
            )
            continue
        check_finish_reasons(c, req.sampling.n)
        s = req.sampling
        prov = Provenance(
            engine=pool.engine_name,
            model=pool.model_id,
            prompt_sha=u.prompt_sha,
            mode=mode,
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_tokens,
            seed=u.seed,
            tokens_in=c.tokens_in,
            tokens_out=c.tokens_out,
            latency_s=c.latency_s,
        )
        results.append(
            RawResult(
                u.key,
                u.source.id,
                u.source.text,
                getattr(u.source, "image_ref", None),
                u.task,
                c.texts,
                c.finish_reasons,
                prov,
                __version__,
                getattr(u.source, "group", None),
                c.engine_s,
                c.accelerator,
                c.setup_s,
            )
        )
    if failures:
        store.write_failures(failures)
    info = store.write_part(results) if results else None
    if seen is not None:
        seen(results, failures)
    return info


@dataclass
class Progress:
    """What generation did, summed over blocks and stages: units planned, generated now, found done."""

    units: int = 0
    generated: int = 0
    reused: int = 0


def finished(store: RunStore, keys: list[str]) -> tuple[list[RawResult], list[Rejection]]:
    """The raw results of ``keys`` and the units among them the engine gave up on (as rejections); an error
    when some planned unit has neither (a rerun resumes it)."""
    raws, failed = store.read_raw(keys), store.read_failures(keys)
    missing = len(keys) - len(raws) - len(failed)
    if missing:
        raise RuntimeError(
            f"{store.root}: {missing} planned units have no raw result; rerun the same command to resume"
        )
    return raws, failed


def part_size(cfg) -> int:
    """Units per part: ``output.units_per_part``, else enough requests to fill the engine twice (a part is one
    engine call; a replica then never idles for lack of sequences), at least 64."""
    if cfg.output.units_per_part:
        return cfg.output.units_per_part
    return max(64, -(-2 * cfg.engine.capacity() // cfg.sampling.n))
