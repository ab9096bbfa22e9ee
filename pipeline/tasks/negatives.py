"""Typed negative captions (DeGLA, SugarCrepe) plus one paraphrase positive per caption.

Task contract
- inputs: :class:`CaptionRecord` (``id``, ``caption``, optional ``image_ref``)
- outputs: :class:`NegativeRow` (kept) or :class:`Rejection` (reason code, raw text)
- render: :func:`render` (template from ``prompts/negatives/<task>.yaml``, few-shot as chat turns)
- parse: :func:`parse_unit` (strict parse, apply edit, structural type check)
"""

from __future__ import annotations

import hashlib
import json

from pipeline import __version__
from pipeline.config import NegType, RunConfig
from pipeline.records import (
    CaptionRecord,
    GenerationRequest,
    NegativeRow,
    RawResult,
    Rejection,
    Sampling,
    Unit,
)
from pipeline.tasks.edits import (
    Candidate,
    Failure,
    apply_replace,
    apply_swap,
    parse_answer,
)
from pipeline.tasks.structure import Shape, check_shapes
from pipeline.tasks.templates import Template, load_templates

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
    return [t.value for t in cfg.negatives.types] + ([PARAPHRASE] if cfg.negatives.paraphrase else [])


def templates_for(cfg: RunConfig) -> dict[str, Template]:
    return load_templates(cfg.negatives.prompts_dir, task_names(cfg))


def mode_for(task: str, cfg: RunConfig) -> str:
    return "rewrite" if task == PARAPHRASE else cfg.negatives.mode


def _sha(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def unit_key(src: CaptionRecord, task: str, tpl: Template, cfg: RunConfig) -> str:
    """Hash of input row, template text, model, sampling params, seed, mode and code version."""
    s = cfg.sampling
    return _sha({
        "row": [src.id, src.caption, src.image_ref], "task": task, "template": tpl.sha256,
        "model": cfg.engine.model_id(), "sampling": [s.temperature, s.top_p, s.max_tokens, s.n],
        "seed": s.seed, "mode": mode_for(task, cfg), "code": __version__,
    })


def unit_seed(run_seed: int, source_id: str, task: str) -> int:
    return int(_sha([run_seed, source_id, task])[:8], 16)


def plan_units(captions: list[CaptionRecord], cfg: RunConfig, templates: dict[str, Template]) -> list[Unit]:
    """One unit per caption x task, in a deterministic order."""
    return [
        Unit(unit_key(c, t, templates[t], cfg), c, t, templates[t].sha256, unit_seed(cfg.sampling.seed, c.id, t))
        for c in captions for t in task_names(cfg)
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
    system = tpl.system_edit if (mode == "edit" and tpl.edit_format != "rewrite") else tpl.system_rewrite
    msgs: list[tuple[str, str]] = [("system", system.strip())]
    for ex in tpl.examples:
        msgs += [("user", tpl.render_user(ex.caption)), ("assistant", example_answer(tpl, ex.caption, ex.answer, mode))]
    msgs.append(("user", tpl.render_user(unit.source.caption)))
    s = cfg.sampling
    return GenerationRequest(unit.key, tuple(msgs), Sampling(s.temperature, s.top_p, s.max_tokens, s.n, unit.seed))


def parse_unit(raw: RawResult, tpl: Template) -> Candidate | Rejection:
    """First valid sample wins; when none is valid the unit is rejected with the first sample's reason."""
    fmt = "rewrite" if raw.provenance.mode == "rewrite" else tpl.edit_format
    shape = SHAPES[raw.task]
    first_failure: Failure | None = None
    for text, finish in zip(raw.texts, raw.finish_reasons, strict=True):
        cand = parse_answer(raw.caption, text, fmt, finish)
        if isinstance(cand, Candidate):
            if cand.text.strip().lower() == raw.caption.strip().lower():
                cand = Failure("copy_of_input")
            elif len(cand.text) > 3 * len(raw.caption) + 40:
                cand = Failure("too_long", f"{len(cand.text)} chars")
            elif not check_shapes(shape, [raw.caption], [cand.text])[0]:
                cand = Failure("type_mismatch", f"expected a {shape} of the caption")
        if isinstance(cand, Candidate):
            return cand
        first_failure = first_failure or cand
    assert first_failure is not None
    p = raw.provenance
    return Rejection(
        stage="generation", reason=first_failure.reason, detail=first_failure.detail,
        raw=" ||| ".join(raw.texts), source_id=raw.source_id, task=raw.task, unit_key=raw.unit_key,
        prompt_sha=p.prompt_sha, model=p.model, seed=p.seed,
    )


def row_id(source_id: str, task: str, negative: str) -> str:
    return _sha([source_id, task, negative])[:20]


def assemble(raws: list[RawResult], templates: dict[str, Template]) -> tuple[list[NegativeRow], list[Rejection]]:
    """Parse every raw unit; pair each valid negative with its caption's valid paraphrase positive."""
    parsed = {r.unit_key: parse_unit(r, templates[r.task]) for r in raws}
    positives: dict[str, tuple[str, str]] = {}
    for r in raws:
        if r.task == PARAPHRASE and isinstance(parsed[r.unit_key], Candidate):
            positives[r.source_id] = (parsed[r.unit_key].text, r.provenance.prompt_sha)
    rows, rejects = [], []
    for r in raws:
        out = parsed[r.unit_key]
        if isinstance(out, Rejection):
            rejects.append(out)
        elif r.task != PARAPHRASE:
            pos, pos_sha = positives.get(r.source_id, (None, None))
            rows.append(NegativeRow(
                id=row_id(r.source_id, r.task, out.text), caption=r.caption, positive=pos, negative=out.text,
                neg_type=r.task, source_id=r.source_id, image_ref=r.image_ref, surface_sim=0.0,
                edit=out.edit, positive_prompt_sha=pos_sha, provenance=r.provenance,
            ))
    return rows, rejects
