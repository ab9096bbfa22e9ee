"""`contrastgen filter DIR --out DIR2`: rerun the filter stage (and the writer, card, manifest) on a finished
dataset's raw generations, with other filter settings and without any LLM call.

Config precedence: defaults < DIR's saved config < ``--config`` file (only ``filters`` and ``output``) <
environment. DIR is never written; DIR2 gets a copy of DIR's raw parts, so it is a complete dataset that
``generate`` could resume and ``filter`` could refine again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.config import RunConfig, read_yaml, resolve
from pipeline.errors import ConfigError, ContrastgenError, DatasetError
from pipeline.kinds import KINDS
from pipeline.kinds.base import Context, Inputs, Stage
from pipeline.records import Rejection
from pipeline.run.common import Summary, Timing
from pipeline.run.generate import finalize
from pipeline.run.store import store_of
from pipeline.shards.card import load_manifest
from pipeline.shards.writer import read_shard, sha256_file

TUNABLE = ("filters", "output")  # what a filter config may change; the rest describes how DIR was generated
_GENERATION = ("input", "engine", "sampling", "negatives")


def refilter_config(src: Path, out: Path, config_file: Path | None) -> RunConfig:
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
    changed = [k for k in _GENERATION if not _same(saved.get(k), now[k])]
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


def _input_rejects(src: Path, manifest: dict) -> list[Rejection]:
    out = []
    for shard in manifest["shards"]:
        if shard["split"] == "rejected":
            for d in read_shard(src, shard).to_pylist():
                if d["stage"] == "input":
                    out.append(Rejection(**{k: v for k, v in d.items() if k in Rejection.__dataclass_fields__}))
    return out


def refilter(src: Path, out: Path, config_file: Path | None = None) -> Summary:
    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve():
        raise ContrastgenError(
            f"--out {out}: expected a new folder, got DIR itself. Fix: pass another --out; DIR is kept as it is."
        )
    manifest = load_manifest(src)
    if manifest.get("format") != "contrastgen.negatives/1":
        raise DatasetError(
            f"{src}: `contrastgen filter` reruns the filters of negatives datasets, got format "
            f"{manifest.get('format')!r}. Fix: rerun the same `contrastgen generate` command with the new "
            "`filters:` in --config: every unit is reused from raw/, so no LLM call is made."
        )
    cfg = refilter_config(src, out, config_file)
    kind = KINDS["negatives"]
    templates = kind.templates(cfg)
    with store_of(cfg, "negatives") as store:
        for part in manifest["raw_parts"]:
            source = src / part["path"]
            if not source.is_file() or sha256_file(source) != part["sha256"]:
                raise DatasetError(
                    f"{source}: expected the raw part listed in {src}/manifest.json (sha256 {part['sha256'][:12]}), "
                    "found it missing or changed. Fix: regenerate DIR, or restore the part."
                )
            shutil.copyfile(source, store.root / part["path"])
        plan = manifest.get("plan")
        if plan is None or sha256_file(src / plan["path"]) != plan["sha256"]:
            raise DatasetError(
                f"{src}: expected plan.arrow (the unit keys of the dataset) as listed in its manifest, "
                "found it missing or changed. Fix: rerun `contrastgen generate` on DIR (it reuses every unit)."
            )
        shutil.copyfile(src / plan["path"], store.root / plan["path"])
        raws = store.read_raw(store.read_plan())
        stale = sorted({r.task for r in raws if r.provenance.prompt_sha != templates[r.task].sha256})
        if stale:
            raise DatasetError(
                f"{src}: the prompt templates of {stale} changed since DIR was generated (prompt_sha "
                "differs), so its raw answers would be parsed against other templates. Fix: filter with "
                "the contrastgen version that generated DIR, or regenerate."
            )
        keys = frozenset(r.unit_key for r in raws)
        inputs = Inputs([], _input_rejects(src, manifest), manifest["counts"]["inputs"])
        ctx = Context(
            cfg, templates, inputs, raws=lambda name: raws, stages={"generate": Stage(keys, [], [], len(keys))}
        )
        return finalize(kind, ctx, store, Timing(), manifest.get("run_id"), walk=lambda: iter([ctx]))
