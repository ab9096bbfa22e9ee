"""What a data kind declares, and the typed records that cross between a kind and the one run path.

A kind (negatives, rationales, pairs, ...) is one object that satisfies :class:`Kind`. The run path
(:mod:`pipeline.run.generate`) and the flow (:mod:`flows.generate`) know nothing else about it:

    preflight:  kind.check(cfg), kind.templates(cfg)
    plan:       kind.read(cfg) -> Inputs; for each name in kind.stages(cfg): kind.units(name, ctx)
                (a stage's units may depend on the raw results of the stages before it: ctx.raws(name))
    generate:   kind.render(unit, ctx) per unit, kind.mode(unit, cfg) as provenance; one raw part per chunk
    finalize:   per block of sources: kind.assemble(ctx, raws) -> Assembled; the filter stage
                (filters.<kind.name>); kind.table(rows) per split; kind.positives(...) for the summary;
                then kind.card(ctx, tally) once, from what every block added to the :class:`Tally`
    train/view: kind.as_training(table): the kind's shards in the one training layout (:data:`TRAINING_COLUMNS`)

Stages are resumable by construction: a unit's key hashes everything that decides its output, the store
keeps finished units, and planning a stage again finds them done.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from pipeline import __version__
from pipeline.records import Reason, Rejection, RejectStage
from pipeline.shards.card import CardFacts

if TYPE_CHECKING:
    import pyarrow as pa

    from pipeline.filters.config import FilterConfig
    from pipeline.records import GenerationRequest, RawResult, Unit
    from pipeline.settings import BaseRunConfig as RunConfig
    from pipeline.settings import Section


@dataclass(frozen=True)
class Inputs:
    """What a kind reads before any generation: its anchor records, the input rows it rejected (with file,
    line and field), and how many input rows it was given (the card's first funnel step)."""

    records: list[Any]
    rejects: list[Rejection]
    count: int


def sampled(inputs: Inputs, rows: int | None) -> Inputs:
    """``inputs`` with ``rows`` of its records spread evenly over them (``input.sample_rows``; all of them for None
    or more rows than there are): a trial's sample, e.g. ``generate --estimate``'s. Its count is the sample's.

    >>> s = sampled(Inputs(list(range(10)), [], 10), 3)
    >>> s.records, s.count
    ([0, 3, 6], 3)
    """
    n = len(inputs.records)
    if rows is None or rows >= n:
        return inputs
    return Inputs([inputs.records[i * n // rows] for i in range(rows)], inputs.rejects, rows)


@dataclass(frozen=True)
class Stage:
    """One stage's planned units (their keys), the chunks not generated yet (one raw part each), and how
    many units were found done in the store."""

    keys: frozenset[str]
    units: list[Unit]
    pending: list[list[Unit]]
    reused: int


@dataclass
class Context:
    """What a kind's planning and assembling see: the config, the loaded templates, the inputs, the stages
    planned so far, and the raw results of a stage (sorted by unit key; units the engine gave up on have none)."""

    cfg: RunConfig
    templates: dict[str, Any]
    inputs: Inputs
    raws: Callable[[str], list[RawResult]]
    stages: dict[str, Stage] = field(default_factory=dict)


@dataclass(frozen=True)
class Assembled:
    """A kind's rows before the filter stage, its generation rejections (parse and validation failures,
    with reason codes), and its own statistics (reported on the card and in the manifest)."""

    rows: list[Any]
    rejects: list[Rejection]
    stats: Any


class Kind(Protocol):
    """A data kind. ``name`` is its CLI word, the name of its config section (of type ``section``) and of its filter
    section (``filters.<name>``, defaults ``filters``), and its format (``contrastgen.<name>/1``)."""

    # Read-only attributes (a kind is a frozen dataclass), hence properties in this protocol.
    @property
    def name(self) -> str: ...
    @property
    def help(self) -> str: ...  # one line for `contrastgen generate --help`
    @property
    def input_help(self) -> str: ...  # what --input holds
    @property
    def anchor(self) -> str: ...  # the anchor column (caption, question, anchor): the filter stage's anchor text
    @property
    def type_column(self) -> str: ...  # the per-row type column (the filter stage's stratum)
    @property
    def sample_key(self) -> str: ...  # the column the card's samples are picked by
    @property
    def schema(self) -> pa.Schema: ...  # the Arrow schema of its train and test shards
    @property
    def card_template(self) -> str: ...  # file name of its card body beside this module (cards/<name>.md)
    @property
    def tags(self) -> tuple[str, ...]: ...  # Hugging Face tags on the card
    @property
    def positive_task(self) -> str | None: ...  # set when a row may lose its positive alone (negatives: the paraphrase)
    @property
    def part_assembles(
        self,
    ) -> bool: ...  # a part's results assemble alone (live valid/rejected counts by type while generating)
    @property
    def flags(self) -> tuple[Flag, ...]: ...  # its `generate <name>` flags
    @property
    def scores_retrieval(self) -> bool: ...  # `contrastgen train` also scores its test split as retrieval (recall@k)
    @property
    def section(self) -> type[Section]: ...  # its settings class: the run config's `<name>:` section
    @property
    def filters(self) -> FilterConfig: ...  # its filter defaults: the run config's `filters.<name>` section

    def settings_problems(self, cfg: RunConfig) -> list[str]: ...  # checks across its sections when a config loads

    def anchor_of(self, row: Any) -> str: ...  # a row's anchor text (its `anchor` column)
    def type_of(self, row: Any) -> str: ...  # a row's type (its `type_column`): the filter stage's stratum
    def check(self, cfg: RunConfig) -> None: ...
    def templates(self, cfg: RunConfig) -> dict[str, Any]: ...
    def read(self, cfg: RunConfig) -> Inputs: ...
    def stages(self, cfg: RunConfig) -> tuple[str, ...]: ...
    def task_order(self, cfg: RunConfig) -> list[str]: ...
    def units(self, stage: str, ctx: Context) -> list[Unit]: ...
    def render(self, unit: Unit, ctx: Context) -> GenerationRequest: ...
    def mode(self, unit: Unit, cfg: RunConfig) -> str: ...
    def assemble(self, ctx: Context, raws: list[RawResult]) -> Assembled: ...
    def reject_task(self, row: Any) -> str: ...
    def assembly_settings(self, cfg: RunConfig) -> dict[str, Any]: ...  # settings that decide rows at assembly
    def table(self, rows: list[Any]) -> pa.Table: ...
    def positives(self, rows: list[Any], raws: list[RawResult], assembled: Assembled, positive_drops: int) -> int: ...
    def card(self, ctx: Context, tally: Tally) -> CardFacts: ...
    def as_training(self, table: pa.Table) -> pa.Table: ...  # its shard's rows in the training layout


TRAINING_REQUIRED = ("anchor", "positive", "negative", "type", "source_id")
TRAINING_OPTIONAL = ("weight", "group")
TRAINING_COLUMNS = TRAINING_REQUIRED + TRAINING_OPTIONAL
"""The training layout: what ``contrastgen train`` and ``contrastgen view`` read of every kind
(:meth:`Kind.as_training`), one row per (anchor, negative). ``anchor``: the text trained on (a caption, a question,
a query, a sentence); ``positive``: its own positive (null: none); ``negative``; ``type``: the negative's type (the
per-type scores, the view's type filter); ``source_id``: rows that share it are one anchor's (the trainer groups
them by it). Where the kind has them: ``weight``, a negative's loss weight (1 when absent), and ``group``: anchors
of one input group are positives of each other and never share a batch."""


def training_layout(table: pa.Table, renames: dict[str, str]) -> pa.Table:
    """``table`` (a kind's shard) in the training layout: its columns renamed by ``renames`` (the kind's name ->
    the layout's), then only the layout's columns, in :data:`TRAINING_COLUMNS` order; a layout column the shard
    lacks stays missing (the trainer names it).

    >>> import pyarrow as pa
    >>> training_layout(pa.table({"id": ["1"], "negative": ["n"], "query": ["q"]}), {"query": "anchor"}).column_names
    ['anchor', 'negative']
    """
    table = table.rename_columns([renames.get(c, c) for c in table.column_names])
    return table.select([c for c in TRAINING_COLUMNS if c in table.column_names])


@dataclass(frozen=True)
class TypeStats:
    """One row of a card's per-type table: a task's units, kept rows, yield, splits and top rejection reasons."""

    task: str
    units: int
    kept: int
    yield_: float
    train: int
    test: int
    reasons: str


SAMPLE_ROWS = 2000  # kept rows a Tally holds for the card's examples


@dataclass
class Tally:
    """What the card needs of a dataset, added block by block (:meth:`add`): bounded whatever its size. ``kept``
    counts rows by (type, split), ``reasons`` generation and filter rejections by (task, reason) (finalize
    replaces them by the published rejected shards' counts: an append's card counts every release), ``units``
    units by task (a result or an engine failure); ``stats`` is the kinds' Assembled.stats merged
    (:func:`merge_stats`)."""

    samples: list[Any] = field(default_factory=list)
    stats: Any = None
    units: Counter = field(default_factory=Counter)
    kept: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    no_positive: int = 0

    def add(
        self,
        type_of: Callable[[Any], str],
        raws: list[RawResult],
        failed: list[Rejection],
        rows: list[Any],
        splits: list[str],
        rejects: list[Rejection],
        stats: Any,
    ) -> None:
        self.samples.extend(rows[: max(0, SAMPLE_ROWS - len(self.samples))])
        self.stats = merge_stats(self.stats, stats)
        self.units.update([r.task for r in raws] + [r.task for r in failed])
        self.kept.update(zip(map(type_of, rows), splits))
        self.reasons.update(
            (r.task, r.reason) for r in rejects if r.stage in (RejectStage.generation, RejectStage.filter)
        )
        self.no_positive += sum(1 for r in rows if getattr(r, "positive", "") is None)

    def merge(self, other: Tally) -> None:
        """Add another block's tally (blocks in order: the samples are the first blocks')."""
        self.samples.extend(other.samples[: max(0, SAMPLE_ROWS - len(self.samples))])
        self.stats = merge_stats(self.stats, other.stats)
        for mine, theirs in ((self.units, other.units), (self.kept, other.kept), (self.reasons, other.reasons)):
            mine.update(theirs)
        self.no_positive += other.no_positive


def merge_stats(a: Any, b: Any) -> Any:
    """Two blocks' statistics as one: numbers added, dicts added key by key, dataclasses field by field (a kind's
    statistics hold counts and sums, never a mean: a mean of means would be wrong).

    >>> merge_stats({"x": 1, "y": 2}, {"x": 3}), merge_stats(None, 4)
    ({'x': 4, 'y': 2}, 4)
    """
    if a is None:
        return b
    if is_dataclass(a) and not isinstance(a, type):
        return replace(a, **{f.name: merge_stats(getattr(a, f.name), getattr(b, f.name)) for f in fields(a)})
    if isinstance(a, dict):
        return {k: merge_stats(a.get(k), b.get(k)) if k in a and k in b else a.get(k, b.get(k)) for k in {**a, **b}}
    return a + b


@dataclass(frozen=True)
class Flag:
    """One `generate <kind>` flag and the config field it sets (``section.key``); ``kwargs`` go to argparse."""

    name: str
    section: str
    key: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def pick_samples(rows: list[Any], key: str, per_value: int, limit: int | None = None) -> list[Any]:
    """The first ``per_value`` rows of each value of ``key`` (in row order), at most ``limit`` in all."""
    out: list[Any] = []
    seen: dict[Any, int] = {}
    for r in rows:
        v = getattr(r, key)
        if seen.get(v, 0) < per_value:
            out.append(r)
            seen[v] = seen.get(v, 0) + 1
    return out[:limit] if limit else out


def sha(obj: object) -> str:
    """sha256 of ``obj`` as canonical JSON: the one hash of unit keys, unit seeds and row ids."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def unit_key(row: list, task: str, template_sha: str, sampling: Any, cfg: RunConfig, **extra: Any) -> str:
    """Hash of everything that decides a unit's output: its input row, task, template text, model, the task's
    sampling, the run seed and the code version (plus any ``extra``, e.g. the negatives mode). A rerun finds a
    unit done exactly when nothing of this changed."""
    s = sampling
    return sha(
        {
            "row": row,
            "task": task,
            "template": template_sha,
            "model": cfg.engine.model_id(),
            "sampling": [s.temperature, s.top_p, s.max_tokens, s.n],
            "seed": cfg.sampling.seed,
            "code": __version__,
            **extra,
        }
    )


def unit_seed(run_seed: int, *parts: str) -> int:
    """A unit's sampling seed: a hash of the run seed and the unit's identity (source id, task, ...)."""
    return int(sha([run_seed, *parts])[:8], 16)


def row_id(*parts: str) -> str:
    return sha(list(parts))[:20]


def raw_rejection(
    raw: RawResult,
    reason: Reason,
    detail: str,
    text: str,
    *,
    seed: int | None = None,
    stage: RejectStage = RejectStage.generation,
) -> Rejection:
    """A rejected answer of ``raw`` (``text``: the sample, or every sample joined), traceable to its unit, prompt,
    model and seed (``seed``: the sample's own, where a unit's samples have one each)."""
    p = raw.provenance
    return Rejection(
        stage=stage,
        reason=reason,
        detail=detail,
        raw=text,
        source_id=raw.source_id,
        task=raw.task,
        unit_key=raw.unit_key,
        prompt_sha=p.prompt_sha,
        model=p.model,
        seed=p.seed if seed is None else seed,
    )


def check_input_output(cfg: RunConfig, input_required: bool = True) -> None:
    """--out given, --input given (when the kind needs one), and the input exists."""
    from pipeline.errors import ContrastgenError, InputFileError

    missing = [
        n
        for n, v, need in (
            ("input.path (--input)", cfg.input.path, input_required),
            ("output.dir (--out)", cfg.output.dir, True),
        )
        if need and v is None
    ]
    if missing:
        raise ContrastgenError(f"expected {' and '.join(missing)}, got none. Fix: pass the flag or set it in --config")
    if cfg.input.path is not None and not Path(cfg.input.path).exists():
        raise InputFileError(cfg.input.path, "file not found. Fix: check --input")
