"""Dataset card (README.md with Hugging Face YAML front matter) and manifest.json.

The card body renders from ``card_template.md`` with a typed :class:`CardParams`; the front matter is
dumped from a dict by PyYAML (never templated), so captions cannot break its structure.
"""

from __future__ import annotations

import json
import platform
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import yaml

from pipeline import __version__
from pipeline.errors import DatasetError
from pipeline.shards.schema import (
    NEGATIVES_SCHEMA,
    PAIRS_SCHEMA,
    RATIONALES_SCHEMA,
    REJECTED_SCHEMA,
)
from pipeline.shards.publish import split_of
from pipeline.shards.writer import ShardInfo, write_bytes_atomic

if TYPE_CHECKING:
    from pipeline.config import RunConfig
    from pipeline.filters.stage import StageResult
    from pipeline.records import NegativeRow, RawResult, Rejection
    from pipeline.run.negatives import Summary
    from pipeline.run.store import RunStore
    from pipeline.tasks.templates import Template

_TEMPLATE = Path(__file__).with_name("card_template.md")
ENGINE_FAILURES = ("engine_crash", "engine_timeout")  # units with no raw result, rejected
_DTYPES = {"string": "string", "float": "float32", "int32": "int32", "int64": "int64"}


@dataclass(frozen=True)
class TypeStats:
    task: str
    units: int
    kept: int
    yield_: float
    train: int
    test: int
    reasons: str


@dataclass(frozen=True)
class CardParams:
    pretty_name: str
    version: str
    root: str
    run_id: str | None
    summary: Any
    per_type: list[TypeStats]
    samples: list[Any]
    no_positive: int
    engine: str
    model: str
    mode: str
    cfg: Any
    prompts: dict[str, str]
    config_yaml: str
    funnel: list[Any]  # FunnelStep of the filter stage
    filter_report: dict[str, Any]
    thresholds: dict[str, Any]  # the filter config the stage ran with, as data
    plots: list[str]
    releases: list[dict]
    kind: str = "negatives"  # the data kind: its filter settings are filters.<kind>
    anchor: str = "caption"  # what the anchor of a row is called


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def _features(schema) -> list[dict[str, str]]:
    return [{"name": f.name, "dtype": _DTYPES.get(str(f.type), str(f.type))} for f in schema]


def per_type_stats(raws: list[RawResult], rows: list[NegativeRow], rejects: list[Rejection], test_ids: set[str]) -> list[TypeStats]:
    units = Counter(r.task for r in raws) + Counter(r.task for r in rejects if r.reason in ENGINE_FAILURES)
    kept = Counter(r.neg_type for r in rows)
    test = Counter(r.neg_type for r in rows if r.id in test_ids)
    reasons: dict[str, Counter] = defaultdict(Counter)
    for r in rejects:
        if r.stage in ("generation", "filter"):
            reasons[r.task][r.reason] += 1
    out = []
    for t in units:
        k = kept[t] if t != "paraphrase" else units[t] - sum(reasons[t].values())
        top = ", ".join(f"{reason} {n}" for reason, n in reasons[t].most_common(3))
        out.append(TypeStats(t, units[t], k, k / units[t] if units[t] else 0.0, k - test[t] if t != "paraphrase" else 0, test[t], top))
    return out


def _split_info(split: str, shards: list[ShardInfo]) -> dict[str, Any]:
    mine = [s for s in shards if s.split == split]
    return {"name": split, "num_bytes": sum(s.num_bytes for s in mine), "num_examples": sum(s.rows for s in mine)}


def front_matter(cfg: RunConfig, summary: Summary, shards: list[ShardInfo], schema=NEGATIVES_SCHEMA,
                 kind: str = "negatives", tags: tuple[str, ...] = ("hard-negatives", "compositionality")) -> dict[str, Any]:
    splits = [s for s in summary.splits if summary.splits[s]]  # `datasets` refuses a declared split with no rows
    configs = [{"config_name": "rejected", "data_files": [{"split": "rejected", "path": "rejected/rejected-*.arrow"}]}]
    infos = [{"config_name": "rejected", "features": _features(REJECTED_SCHEMA), "splits": [_split_info("rejected", shards)]}]
    if splits:  # a run that kept no row still loads: its rejected config is then the only one
        configs.insert(0, {"config_name": "default", "default": True,
                           "data_files": [{"split": s, "path": f"data/{s}-*.arrow"} for s in splits]})
        infos.insert(0, {"config_name": "default", "features": _features(schema), "splits": [_split_info(s, shards) for s in splits]})
    return {
        "configs": configs,
        "dataset_info": infos,
        "license": cfg.output.license,
        "size_categories": [_size_category(summary.kept)],
        "task_categories": ["sentence-similarity", "feature-extraction"],
        "tags": ["contrastgen", "synthetic", *tags],
        "source_datasets": [f"extended|{Path(cfg.input.path).name}" if cfg.input.path else "original"],
        "pretty_name": f"contrastgen {kind}: {Path(cfg.input.path or 'input').stem}",
    }


def load_manifest(root: Path) -> dict[str, Any]:
    """The manifest of a dataset folder, or a DatasetError that says what was found and the fix."""
    root = Path(root)
    path = root / "manifest.json"
    if not root.is_dir() or not path.is_file():
        raise DatasetError(
            f"{root}: expected a contrastgen dataset folder (with manifest.json, written by "
            f"`contrastgen generate negatives`), found {'no folder' if not root.is_dir() else 'no manifest.json'}. "
            "Fix: pass the --out folder of a finished generate run."
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: expected JSON, got an unreadable file ({exc})") from exc


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "contrastgen": __version__}
    for pkg in ("torch", "transformers", "ray", "prefect", "pyarrow", "datasets", "rapidfuzz", "pydantic"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def _finite(obj: Any) -> Any:
    """The report with NaN (a rate over no rows) as None, so manifest.json stays strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return None if isinstance(obj, float) and obj != obj else obj


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:200]


def _render(template: Path, params: Any) -> str:
    """Render a card body; values are data (autoescape off, StrictUndefined: a missing field is an error)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(template.parent), undefined=jinja2.StrictUndefined,
                             autoescape=False, keep_trailing_newline=True)
    env.filters["cell"] = _cell
    env.filters["rate"] = lambda x: "n/a" if x is None or x != x else f"{100 * x:.1f}%"
    env.filters["num"] = lambda x: "n/a" if x is None or x != x else f"{x:.3f}"
    env.filters["off"] = lambda x: "off" if x is None else x
    return env.get_template(template.name).render(p=params)


def write_card_and_manifest(cfg, store: RunStore, summary, rows, raws, rejects, shards, templates: dict[str, Template], run_id,
                            stage: StageResult, plan: ShardInfo, published: dict):
    from pipeline.filters.plots import save_histograms

    root = store.root
    plots = save_histograms(stage.histograms, root / "plots")

    test_ids = {r.id for r in rows if split_of(r.source_id, cfg.output.test_fraction) == "test"}
    stats = per_type_stats(raws, rows, rejects, test_ids)
    samples, seen = [], Counter()
    for r in rows:
        if seen[r.neg_type] < 2:
            samples.append(r)
            seen[r.neg_type] += 1
    cfg_json = cfg.model_dump(mode="json")
    engine = raws[0].provenance.engine if raws else cfg.engine.kind
    front = front_matter(cfg, summary, shards)
    params = CardParams(
        pretty_name=front["pretty_name"], version=__version__, root=str(root),
        run_id=run_id, summary=summary, per_type=stats, samples=samples[:16],
        no_positive=sum(1 for r in rows if r.positive is None), engine=engine, model=cfg.engine.model_id(),
        mode=cfg.negatives.mode, cfg=cfg, prompts={t: tpl.sha256 for t, tpl in templates.items()},
        config_yaml=yaml.safe_dump(cfg_json, sort_keys=False), funnel=stage.funnel, filter_report=stage.report,
        thresholds=cfg_json["filters"]["negatives"], plots=plots, releases=published["releases"],
    )
    body = _render(_TEMPLATE, params)
    card = "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + body
    manifest = {
        "format": "contrastgen.negatives/1", "contrastgen_version": __version__, "run_id": run_id,
        "config": cfg_json, "versions": versions(),
        "prompts": {t: {"sha256": tpl.sha256, "file": tpl.path.name} for t, tpl in templates.items()},
        "shards": [asdict(s) for s in shards], "raw_parts": [asdict(s) for s in store.part_infos()],
        "plan": asdict(plan), "publish": published,
        "counts": asdict(summary), "per_type": [asdict(s) for s in stats],
        "filters": {"funnel": [asdict(f) for f in stage.funnel], "report": _finite(stage.report),
                    "plots": [f"plots/{p}" for p in plots]},
    }
    write_bytes_atomic(root / "README.md", card.encode("utf-8"))
    write_bytes_atomic(root / "manifest.json", (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


@dataclass(frozen=True)
class KindCardParams:
    pretty_name: str
    version: str
    root: str
    run_id: str | None
    summary: Any
    stats: Any  # the kind's Stats (pipeline.tasks.<kind>.Stats)
    samples: list[Any]
    engine: str
    model: str
    cfg: Any
    prompts: dict[str, str]
    config_yaml: str
    funnel: list[Any]
    filter_report: dict[str, Any]
    thresholds: dict[str, Any]
    plots: list[str]
    kind: str
    anchor: str
    releases: list[dict]


def write_rationales_card(cfg, store: RunStore, summary, stats, rows, raws, shards, templates, run_id, stage: StageResult,
                          plan: ShardInfo, published: dict) -> None:
    """README.md and manifest.json of a rationales dataset (format ``contrastgen.rationales/1``)."""
    _write_kind_card("rationales", RATIONALES_SCHEMA, ("rationales", "chain-of-thought", "reasoning"), "neg_source",
                     cfg, store, summary, asdict(stats), stats, rows, raws, shards, templates, run_id, stage, plan, published)


def write_pairs_card(cfg, store: RunStore, summary, stats: dict, rows, raws, shards, templates, run_id, stage: StageResult,
                     plan: ShardInfo, published: dict) -> None:
    """README.md and manifest.json of a sentence-pairs dataset (format ``contrastgen.pairs/1``)."""
    _write_kind_card("pairs", PAIRS_SCHEMA, ("sentence-pairs", "nli", "sentence-embeddings"), "neg_instruction",
                     cfg, store, summary, stats, stats, rows, raws, shards, templates, run_id, stage, plan, published)


def _write_kind_card(kind, schema, tags, sample_key, cfg, store, summary, stats_json, stats, rows, raws, shards, templates,
                     run_id, stage, plan, published) -> None:
    """The card and manifest of the rationales and pairs kinds: one template per kind (card_<kind>.md)."""
    from pipeline.filters.plots import save_histograms

    root = store.root
    plots = save_histograms(stage.histograms, root / "plots")
    cfg_json = cfg.model_dump(mode="json")
    front = front_matter(cfg, summary, shards, schema, kind, tags)
    samples, seen = [], Counter()
    for r in rows:
        if seen[getattr(r, sample_key)] < 3:
            samples.append(r)
            seen[getattr(r, sample_key)] += 1
    params = KindCardParams(
        pretty_name=front["pretty_name"], version=__version__, root=str(root), run_id=run_id, summary=summary,
        stats=stats, samples=samples, engine=raws[0].provenance.engine if raws else cfg.engine.kind,
        model=cfg.engine.model_id(), cfg=cfg, prompts={t: tpl.sha256 for t, tpl in templates.items()},
        config_yaml=yaml.safe_dump(cfg_json, sort_keys=False), funnel=stage.funnel, filter_report=stage.report,
        thresholds=cfg_json["filters"][kind], plots=plots, kind=kind, anchor={"rationales": "question"}.get(kind, "anchor"),
        releases=published["releases"],
    )
    card = "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + _render(Path(__file__).with_name(f"card_{kind}.md"), params)
    manifest = {
        "format": f"contrastgen.{kind}/1", "contrastgen_version": __version__, "run_id": run_id,
        "config": cfg_json, "versions": versions(),
        "prompts": {t: {"sha256": tpl.sha256, "file": tpl.path.name} for t, tpl in templates.items()},
        "shards": [asdict(s) for s in shards], "raw_parts": [asdict(s) for s in store.part_infos()],
        "plan": asdict(plan), "publish": published, "counts": asdict(summary), kind: _finite(stats_json),
        "filters": {"funnel": [asdict(f) for f in stage.funnel], "report": _finite(stage.report),
                    "plots": [f"plots/{p}" for p in plots]},
    }
    write_bytes_atomic(root / "README.md", card.encode("utf-8"))
    write_bytes_atomic(root / "manifest.json", (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
