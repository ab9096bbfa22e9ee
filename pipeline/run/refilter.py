"""`contrastgen filter DIR --out DIR2`: rerun the filter stage (and the writer, card, manifest) on a finished
dataset of any kind, from its raw generations, with other filter settings and without any LLM call.

Config precedence: defaults < DIR's saved config < ``--config`` file (only ``filters`` and ``output``) <
environment. DIR is never written; DIR2 gets a copy of DIR's raw parts (and given-up units), so it is a complete
dataset that ``generate`` could resume and ``filter`` could refine again. The run is planned again from its
inputs (the input file DIR was made from must still be there: rationales take their gold answers from it,
retrieval its passages), every planned unit must be found in the copied parts, and finalize runs as in
``generate``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import RunConfig, read_yaml, resolve
from pipeline.errors import ConfigError, ContrastgenError, DatasetError
from pipeline.kinds import kind_of_format
from pipeline.kinds.base import Context
from pipeline.run.blocks import blocks
from pipeline.run.common import Summary, Timing
from pipeline.run.generate import finalize, plan_stage, start
from pipeline.run.store import RunStore, store_of
from pipeline.shards.card import load_manifest
from pipeline.shards.writer import read_stream, sha256_file

TUNABLE = ("filters", "output")  # what a filter config may change; the rest describes how DIR was generated
_GENERATION = ("input", "engine", "sampling")  # and the kind's own section


def refilter_config(src: Path, out: Path, config_file: Path | None, kind: str) -> RunConfig:
    saved = load_manifest(src)["config"]
    if config_file is not None:
        extra = sorted(set(read_yaml(config_file)) - set(TUNABLE))
        if extra:
            raise ConfigError(
                f"{config_file}: expected only the sections {list(TUNABLE)} (filter reruns no generation), "
                f"got {extra}. Fix: drop them, or run `contrastgen generate` to change generation."
            )
    cfg = resolve(RunConfig, config_file, {"output": {"dir": out}}, base=saved)
    now = cfg.model_dump(mode="json")
    changed = [k for k in (*_GENERATION, kind) if not _same(saved.get(k), now[k])]
    if changed:
        raise ConfigError(
            f"{changed}: expected the generation settings of {src} unchanged (filter makes no LLM call), "
            "got them changed by the environment. Fix: unset those CONTRASTGEN_* variables."
        )
    return cfg


def _same(saved, now) -> bool:
    """``now`` says what ``saved`` said; a setting added to the config after DIR was made (absent from its
    manifest, so it ran at that setting's default) is not a change."""
    if isinstance(saved, dict) and isinstance(now, dict):
        return all(k in now and _same(v, now[k]) for k, v in saved.items())
    return saved == now


def refilter(src: Path, out: Path, config_file: Path | None = None) -> Summary:
    """A dataset of any kind refiltered into ``out``: DIR's raw parts (and given-up units) copied, the run planned
    again from its inputs (every unit must be found done: no LLM call), then finalized with the new filters."""
    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve():
        raise ContrastgenError(
            f"--out {out}: expected a new folder, got DIR itself. Fix: pass another --out; DIR is kept as it is."
        )
    manifest = load_manifest(src)
    kind = kind_of_format(manifest.get("format"), src / "manifest.json")
    cfg = refilter_config(src, out, config_file, kind.name)
    with store_of(cfg, kind.name) as store:
        _copy_raw(src, manifest, store.root)
        ctx = start(kind, cfg)  # the inputs, read again: a kind's rows may need more than its raw answers hold
        stale = _stale_templates(ctx, store)
        if stale:
            raise DatasetError(
                f"{src}: the prompt templates of {stale} changed since DIR was generated (prompt_sha "
                "differs), so its raw answers would be parsed against other templates. Fix: filter with "
                "the contrastgen version that generated DIR, or regenerate."
            )
        missing = 0
        for block in blocks(ctx, store):
            for name in kind.stages(cfg):
                missing += sum(len(c) for c in plan_stage(kind, block, store, name).pending)
        if missing:
            raise DatasetError(
                f"{src}: expected its raw parts to hold every unit its inputs and settings plan, found {missing} "
                f"missing (the input file {cfg.input.path} changed since DIR was made?). Fix: rerun the same "
                "`contrastgen generate` command on DIR with the new `filters:` in --config: it generates only "
                "the missing units."
            )
        return finalize(kind, ctx, store, Timing(), manifest.get("run_id"))


def _copy_raw(src: Path, manifest: dict, root: Path) -> None:
    """DIR's raw parts, checked against its manifest, its given-up units and its plan, copied under ``root``."""
    for part in manifest["raw_parts"]:
        source = src / part["path"]
        if not source.is_file() or sha256_file(source) != part["sha256"]:
            raise DatasetError(
                f"{source}: expected the raw part listed in {src}/manifest.json (sha256 {part['sha256'][:12]}), "
                "found it missing or changed. Fix: regenerate DIR, or restore the part."
            )
        shutil.copyfile(source, root / part["path"])
    for failed in sorted((src / "raw").glob("failed-*.arrow")):  # units given up on: rejected rows, not to redo
        shutil.copyfile(failed, root / "raw" / failed.name)
    plan = manifest.get("plan")
    if plan is None or sha256_file(src / plan["path"]) != plan["sha256"]:
        raise DatasetError(
            f"{src}: expected plan.arrow (the unit keys of the dataset) as listed in its manifest, "
            "found it missing or changed. Fix: rerun `contrastgen generate` on DIR (it reuses every unit)."
        )
    shutil.copyfile(src / plan["path"], root / plan["path"])


def _stale_templates(ctx: Context, store: RunStore) -> list[str]:
    """The tasks of the dataset's planned units whose raw answers were rendered from a template other than today's
    (read part by part: bounded by a part, not by the dataset)."""
    current = pa.array(sorted({t.sha256 for t in ctx.templates.values()}), pa.string())
    planned = read_stream(store.root / "plan.arrow").column("unit_key").combine_chunks()
    stale: set[str] = set()
    for path in store.parts():
        t = read_stream(path).select(["unit_key", "task", "prompt_sha"])
        off = t.filter(
            pc.and_(pc.is_in(t.column("unit_key"), planned), pc.invert(pc.is_in(t.column("prompt_sha"), current)))
        )
        stale.update(off.column("task").to_pylist())
    return sorted(stale)
