"""Typed negative captions (DeGLA, SugarCrepe) plus one paraphrase positive per caption.

Task contract
- inputs: :class:`CaptionRecord` (``id``, ``caption``, optional ``image_ref`` and ``group``)
- outputs: :class:`NegativeRow` (kept) or :class:`Rejection` (reason code, raw text)
- render: :func:`render` (template from ``prompts/negatives/<task>.yaml``, few-shot as chat turns)
- parse: :func:`parse_unit` (strict parse, apply edit, structural type check, word-class check)

Why one module of about 460 lines: it is the kind's logic, read top to bottom (units, render, parse, paraphrase
choice, assembly, card facts); its row, schema and settings are in :mod:`pipeline.kinds.negatives.schema`, the edit
parsers and checks in :mod:`pipeline.text`."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.errors import TemplateError
from pipeline.filters.config import FilterConfig
from pipeline.inputs import read_captions
from pipeline.kinds.base import (
    Assembled,
    CardFacts,
    Context,
    Flag,
    Inputs,
    Tally,
    TypeStats,
    check_input_output,
    pick_samples,
    raw_rejection,
    row_id,
    training_layout,
)
from pipeline.kinds.base import unit_key as _unit_key
from pipeline.kinds.base import unit_seed as _unit_seed
from pipeline.kinds.negatives.schema import FILTER_DEFAULTS, SCHEMA, NegativeRow, NegativesConfig, NegType
from pipeline.records import (
    CaptionRecord,
    GenerationRequest,
    RawResult,
    Reason,
    Rejection,
    RejectStage,
    Sampling,
    Unit,
)
from pipeline.settings import BaseRunConfig as RunConfig
from pipeline.shards.schema import rows_table
from pipeline.text.edits import (
    Candidate,
    Failure,
    apply_replace,
    apply_swap,
    parse_answer,
)
from pipeline.text.paraphrase import by_wording, content_failure
from pipeline.text.structure import Shape, check_shapes
from pipeline.text.templates import Template, load_template
from pipeline.text.word_class import CHECKED, load_parser, parse_captions, word_class_failure


def settings(cfg: RunConfig) -> NegativesConfig:
    """This kind's section of the run config (``negatives:``)."""
    return cfg.section(NegativesConfig)


PARAPHRASE = "paraphrase"


# Explicit dispatch: each task's structural shape, beside the task names.
SHAPES: dict[str, Shape] = {
    NegType.reshuffle_order.value: "permutation",
    NegType.swap_obj.value: "permutation",
    NegType.swap_att.value: "permutation",
    NegType.replace_att.value: "replace_span",
    NegType.replace_obj.value: "replace_span",
    NegType.replace_rel.value: "replace_span",
    NegType.add_obj.value: "insertion",
    NegType.add_att.value: "insertion",
    PARAPHRASE: "paraphrase",
}


def task_names(cfg: RunConfig) -> list[str]:
    return [t.value for t in settings(cfg).types] + ([PARAPHRASE] if settings(cfg).paraphrase else [])


# The template layout's negatives parts (pipeline.text.templates): the one slot, the two modes (an edit template
# gives a system prompt for each: systems.edit, systems.rewrite), and how the model writes its answer.
SLOTS = ("caption",)
MODES = ("edit", "rewrite")
EDIT_FORMATS = ("swap", "replace", "rewrite")


def load_task_template(folder: Path, task: str) -> Template:
    """``folder/<task>.yaml``: the caption slot, an ``edit_format``, and for an edit format (swap, replace) one
    system prompt per mode (a rewrite template, the paraphrase, may have just one); errors name file and field."""
    tpl = load_template(Path(folder) / f"{task}.yaml", SLOTS, task=task, modes=MODES, edit_formats=EDIT_FORMATS)
    if tpl.edit_format != "rewrite" and tpl.system is not None:
        raise TemplateError(
            f"{tpl.path}: field 'systems' must give an edit and a rewrite system prompt for edit_format "
            f"{tpl.edit_format}, got one 'system'; fix: write systems.edit and systems.rewrite instead"
        )
    return tpl


def templates_for(cfg: RunConfig) -> dict[str, Template]:
    return {task: load_task_template(settings(cfg).prompts_dir, task) for task in task_names(cfg)}


def mode_for(task: str, cfg: RunConfig) -> str:
    return "rewrite" if task == PARAPHRASE else settings(cfg).mode


def unit_key(src: CaptionRecord, task: str, tpl: Template, cfg: RunConfig) -> str:
    """Hash of input row, template text, model, sampling params, seed, mode and code version. The group enters
    the row only when the caption has one (the raw result carries it to the rows): ungrouped keys stay as they were."""
    row = [src.id, src.caption, src.image_ref] + ([src.group] if src.group is not None else [])
    extra = {"candidates": k} if (k := candidates_for(task, cfg)) is not None else {}
    return _unit_key(row, task, tpl.sha256, cfg.sampling, cfg, mode=mode_for(task, cfg), **extra)


def candidates_for(task: str, cfg: RunConfig) -> int | None:
    """The paraphrase unit's own sample count (``negatives.paraphrase_candidates``), None for the rest."""
    return settings(cfg).paraphrase_candidates if task == PARAPHRASE else None


def unit_seed(run_seed: int, source_id: str, task: str) -> int:
    return _unit_seed(run_seed, source_id, task)


def plan_units(captions: list[CaptionRecord], cfg: RunConfig, templates: dict[str, Template]) -> list[Unit]:
    """One unit per caption x task, in a deterministic order."""
    return [
        Unit(unit_key(c, t, templates[t], cfg), c, t, templates[t].sha256, unit_seed(cfg.sampling.seed, c.id, t))
        for c in captions
        for t in task_names(cfg)
    ]


def example_answer(tpl: Template, caption: str, answer: str, mode: str) -> str:
    """A few-shot answer as the model should write it: the edit itself, or the edited sentence."""
    if mode == "edit" or tpl.edit_format == "rewrite":
        return answer
    sep = "<->" if tpl.edit_format == "swap" else "->"
    a, b = (x.strip() for x in answer.split(sep, 1))
    out = apply_swap(caption, a, b) if tpl.edit_format == "swap" else apply_replace(caption, a, b)
    if isinstance(out, Failure):
        raise ValueError(f"{tpl.path}: example edit {answer!r} does not apply to {caption!r}: {out.reason}")
    return out


def render(unit: Unit, tpl: Template, mode: str, cfg: RunConfig) -> GenerationRequest:
    """The mode's system prompt (a rewrite template has one), the examples' answers as the mode asks, the caption."""
    edit = mode == "edit" and tpl.edit_format != "rewrite"
    msgs = tpl.messages(
        {"caption": unit.source.caption},
        "edit" if edit else "rewrite",
        lambda ex: example_answer(tpl, ex.values["caption"], ex.answer, mode),
    )
    s = cfg.sampling
    n = candidates_for(unit.task, cfg) or s.n
    return GenerationRequest(unit.key, msgs, Sampling(s.temperature, s.top_p, s.max_tokens, n, unit.seed))


def parse_sample(raw: RawResult, tpl: Template, text: str, finish: str, doc: Any = None) -> Candidate | Failure:
    """One sample of a unit: strict parse, not a copy, not too long, the type's shape, the word class (``doc``: the
    caption's spaCy parse; None: not checked)."""
    fmt = "rewrite" if raw.provenance.mode == "rewrite" else tpl.edit_format
    shape = SHAPES[raw.task]
    cand = parse_answer(raw.source_text, text, fmt, finish)
    if isinstance(cand, Candidate):
        if cand.text.strip().lower() == raw.source_text.strip().lower():
            cand = Failure(Reason.copy_of_input)
        elif len(cand.text) > 3 * len(raw.source_text) + 40:
            cand = Failure(Reason.too_long, f"{len(cand.text)} chars")
        elif not check_shapes(shape, [raw.source_text], [cand.text])[0]:
            cand = Failure(Reason.type_mismatch, f"expected a {shape} of the caption")
        elif doc is not None and (why := word_class_failure(raw.task, doc, cand.text)):
            cand = Failure(Reason.wrong_word_class, why)
    return cand


def _rejection(raw: RawResult, failure: Failure, text: str, stage: RejectStage = RejectStage.generation) -> Rejection:
    return raw_rejection(raw, failure.reason, failure.detail, text, stage=stage)


def parse_unit(raw: RawResult, tpl: Template, doc: Any = None) -> Candidate | Rejection:
    """First valid sample wins; when none is valid the unit is rejected with the first sample's reason.
    ``doc``: the caption's spaCy parse, for the word-class check (None: not checked)."""
    first_failure: Failure | None = None
    for text, finish in zip(raw.texts, raw.finish_reasons, strict=True):
        cand = parse_sample(raw, tpl, text, finish, doc)
        if isinstance(cand, Candidate):
            return cand
        first_failure = first_failure or cand
    assert first_failure is not None
    return _rejection(raw, first_failure, " ||| ".join(raw.texts))


def paraphrase_candidates(
    raw: RawResult, samples: list[Candidate | Failure], docs: dict[str, Any] | None
) -> tuple[list[str], list[Rejection]]:
    """A paraphrase unit's valid samples (``samples``: each parsed by :func:`parse_sample`), least surface-similar
    to the caption first, and a ``candidate`` rejection for each other sample (parse, shape, or content lost or
    added where ``docs``, spaCy parses of the caption and of the parsed candidates, can tell). No valid sample: the
    unit's one ``generation`` rejection, as :func:`parse_unit` gives it."""
    valid, failed = [], []
    for i, (text, cand) in enumerate(zip(raw.texts, samples, strict=True)):
        if (
            isinstance(cand, Candidate)
            and docs is not None
            and (why := content_failure(docs[raw.source_text], docs[cand.text]))
        ):
            cand = Failure(Reason.content_changed, why)
        if isinstance(cand, Candidate):
            valid.append(cand.text)
        else:
            failed.append(
                _rejection(
                    raw,
                    replace(cand, detail=f"sample {i + 1} of {len(raw.texts)}: {cand.detail}".rstrip(": ")),
                    text,
                    RejectStage.candidate,
                )
            )
    if not valid:
        return [], [_rejection(raw, Failure(failed[0].reason, failed[0].detail), " ||| ".join(raw.texts))]
    uniq = list(dict.fromkeys(valid))
    return [uniq[j] for j in by_wording(raw.source_text, uniq)], failed


def _paraphrases(
    raws: list[RawResult], templates: dict[str, Template], word_class: bool, candidates: bool
) -> tuple[dict[str, tuple[list[str], str]], list[Rejection]]:
    """source -> (its paraphrase candidates, best first; the template's sha) and the paraphrase rejections. With
    ``candidates`` (``negatives.paraphrase_candidates`` set) see :func:`paraphrase_candidates`; without, a unit keeps
    its first valid sample (:func:`parse_unit`), as ``sampling.n`` samples always did."""
    several = [r for r in raws if r.task == PARAPHRASE and len(r.texts) > 1] if candidates else []
    samples = {
        r.unit_key: [parse_sample(r, templates[r.task], t, f) for t, f in zip(r.texts, r.finish_reasons, strict=True)]
        for r in several
    }
    docs = None
    if several and word_class:  # the captions and every candidate text, parsed in one batch
        docs = parse_captions(
            [r.source_text for r in several]
            + [c.text for cs in samples.values() for c in cs if isinstance(c, Candidate)]
        )
    out, rejects = {}, []
    for r in raws:
        if r.task != PARAPHRASE:
            continue
        if r.unit_key in samples:
            cands, failed = paraphrase_candidates(r, samples[r.unit_key], docs)
        else:
            one = parse_unit(r, templates[r.task])
            cands, failed = ([one.text], []) if isinstance(one, Candidate) else ([], [one])
        rejects += failed
        if cands:
            out[r.source_id] = (cands, r.provenance.prompt_sha)
    return out, rejects


def assemble(
    raws: list[RawResult], templates: dict[str, Template], word_class: bool = True, candidates: bool = False
) -> tuple[list[NegativeRow], list[Rejection]]:
    """Parse every raw unit; pair each valid negative with its caption's paraphrase positive (the least
    surface-similar valid candidate; the others, in order, are its alternatives for the filter stage).
    ``word_class``: check the word class of each edit (its caption parsed once), and a paraphrase candidate's
    content; ``candidates``: the paraphrase units' samples are candidates (``negatives.paraphrase_candidates``)."""
    docs = parse_captions([r.source_text for r in raws if r.task in CHECKED]) if word_class else {}
    positives, rejects = _paraphrases(raws, templates, word_class, candidates)
    rows = []
    for r in raws:
        if r.task == PARAPHRASE:
            continue
        out = parse_unit(r, templates[r.task], docs.get(r.source_text))
        if isinstance(out, Rejection):
            rejects.append(out)
            continue
        found = positives.get(r.source_id)
        cands, pos_sha = (tuple(found[0]), found[1]) if found else ((), None)
        rows.append(
            NegativeRow(
                id=row_id(r.source_id, r.task, out.text),
                caption=r.source_text,
                positive=cands[0] if cands else None,
                negative=out.text,
                neg_type=r.task,
                source_id=r.source_id,
                image_ref=r.image_ref,
                surface_sim=0.0,
                edit=out.edit,
                positive_prompt_sha=pos_sha,
                provenance=r.provenance,
                group=r.group,
                positive_alternatives=cands[1:],
            )
        )
    return rows, rejects


def per_type_stats(tally: Tally) -> list[TypeStats]:
    """Per task (by name): units, rows kept (a paraphrase: valid and not dropped), yield, split counts, top reasons."""
    reasons: dict[str, Counter] = defaultdict(Counter)
    for (task, reason), n in tally.reasons.items():
        reasons[task][reason] += n
    out = []
    for t in sorted(tally.units):
        units, test = tally.units[t], tally.kept[(t, "test")]
        k = tally.kept[(t, "train")] + test if t != PARAPHRASE else units - sum(reasons[t].values())
        top = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons[t].items(), key=lambda x: (-x[1], x[0]))[:3])
        out.append(TypeStats(t, units, k, k / units if units else 0.0, k - test if t != PARAPHRASE else 0, test, top))
    return out


@dataclass(frozen=True)
class GroupStats:
    """The input groups (``input.group_column``): captions of one group are positives of each other in training."""

    groups: int
    grouped_captions: int
    largest: int
    views_per_caption: float  # mean number of other captions in a caption's group (its human-view positives)


def group_stats(captions: list[CaptionRecord]) -> GroupStats | None:
    """Counts of the input groups, or None when the captions have none."""
    sizes = Counter(c.group for c in captions if c.group is not None)
    if not sizes:
        return None
    n = sum(sizes.values())
    return GroupStats(len(sizes), n, max(sizes.values()), round(sum(s * (s - 1) for s in sizes.values()) / n, 2))


@dataclass(frozen=True)
class Negatives:
    """The negatives kind: one stage (every caption x task), parse and type-check each edit, pair it with the
    caption's paraphrase positive; a positive the filters drop leaves its rows without one."""

    name: str = "negatives"
    help: str = "typed negative captions + paraphrase positives"
    input_help: str = "captions file (.jsonl/.csv/.parquet) or datasets folder"
    anchor: str = "caption"
    type_column: str = "neg_type"
    sample_key: str = "neg_type"
    schema: pa.Schema = SCHEMA
    card_template: str = "negatives.md"
    tags: tuple[str, ...] = ("hard-negatives", "compositionality")
    positive_task: str | None = PARAPHRASE
    part_assembles: bool = True
    scores_retrieval: bool = False
    section: type[NegativesConfig] = NegativesConfig
    filters: FilterConfig = FILTER_DEFAULTS
    flags: tuple[Flag, ...] = (
        Flag(
            "--types",
            "negatives",
            "types",
            {
                "nargs": "+",
                "choices": [t.value for t in NegType],
                "metavar": "TYPE",
                "help": f"negative types (default: all): {', '.join(t.value for t in NegType)}",
            },
        ),
        Flag(
            "--mode",
            "negatives",
            "mode",
            {"choices": ["edit", "rewrite"], "help": "edit (model names the edit) or rewrite"},
        ),
    )

    def anchor_of(self, row: NegativeRow) -> str:
        return row.caption

    def type_of(self, row: NegativeRow) -> str:
        return row.neg_type

    def settings_problems(self, cfg: RunConfig) -> list[str]:
        exempt = cfg.filters_for(self.name).semantic.false_negative_exempt
        unknown = sorted(set(exempt) - {t.value for t in NegType})
        return (
            [
                f"filters.{self.name}.semantic.false_negative_exempt: expected negative types from "
                f"{[t.value for t in NegType]}, got unknown {unknown}"
            ]
            if unknown
            else []
        )

    def check(self, cfg: RunConfig) -> None:
        check_input_output(cfg)
        if settings(cfg).word_class and any(t.value in CHECKED for t in settings(cfg).types):
            # Preflight: a missing spaCy model is one clear error before any LLM call, and its load (about 2 s) is
            # not paid inside the first part's commit, where it would hold the driver while the engines wait.
            load_parser()

    def templates(self, cfg: RunConfig) -> dict[str, Template]:
        return templates_for(cfg)

    def read(self, cfg: RunConfig) -> Inputs:
        captions, rejects = read_captions(cfg.input)
        return Inputs(captions, rejects, len(captions) + len(rejects))

    def stages(self, cfg: RunConfig) -> tuple[str, ...]:
        return ("generate",)

    def task_order(self, cfg: RunConfig) -> list[str]:
        return task_names(cfg)

    def units(self, stage: str, ctx: Context) -> list[Unit]:
        return plan_units(ctx.inputs.records, ctx.cfg, ctx.templates)

    def render(self, unit: Unit, ctx: Context) -> GenerationRequest:
        return render(unit, ctx.templates[unit.task], mode_for(unit.task, ctx.cfg), ctx.cfg)

    def mode(self, unit: Unit, cfg: RunConfig) -> str:
        return mode_for(unit.task, cfg)

    def assemble(self, ctx: Context, raws: list[RawResult]) -> Assembled:
        rows, rejects = assemble(
            raws, ctx.templates, settings(ctx.cfg).word_class, settings(ctx.cfg).paraphrase_candidates is not None
        )
        valid_positives = sum(r.task == PARAPHRASE for r in raws) - sum(
            r.task == PARAPHRASE and r.stage == RejectStage.generation for r in rejects
        )  # candidates rejected beside a valid one: not units
        return Assembled(rows, rejects, valid_positives)

    def assembly_settings(self, cfg: RunConfig) -> dict[str, Any]:
        return {"word_class": settings(cfg).word_class}  # the word-class check decides rows at assembly

    def reject_task(self, row: NegativeRow) -> str:
        return row.neg_type

    def table(self, rows: list[NegativeRow]) -> pa.Table:
        return rows_table(rows, SCHEMA)

    def positives(
        self, rows: list[NegativeRow], raws: list[RawResult], assembled: Assembled, positive_drops: int
    ) -> int:
        return assembled.stats - positive_drops  # valid paraphrases the filters kept

    def card(self, ctx: Context, tally: Tally) -> CardFacts:
        per_type, groups = per_type_stats(tally), group_stats(ctx.inputs.records)
        return CardFacts(
            samples=pick_samples(tally.samples, "neg_type", 2, 16),
            per_type=per_type,
            stats=groups,
            no_positive=tally.no_positive,
            mode=settings(ctx.cfg).mode,
            manifest={"per_type": [asdict(s) for s in per_type], **({"groups": asdict(groups)} if groups else {})},
        )

    def as_training(self, table: pa.Table) -> pa.Table:
        return training_layout(table, {"caption": "anchor", "neg_type": "type"})


KIND = Negatives()
