"""Dataset card (README.md with Hugging Face YAML front matter) and manifest.json.

One writer for every kind: :func:`write_card` takes a typed :class:`Card`; the body renders from the kind's
template with a typed :class:`CardParams`; the front matter is
dumped from a dict by PyYAML (never templated), so captions cannot break its structure.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import jinja2
import pyarrow as pa
import yaml

from pipeline import __version__
from pipeline.errors import DatasetError
from pipeline.records import meaning
from pipeline.shards.folder import dataset_format
from pipeline.shards.schema import REJECTED_SCHEMA
from pipeline.shards.writer import ShardInfo, write_bytes_atomic

_DTYPES = {"string": "string", "float": "float32", "int32": "int32", "int64": "int64"}


@dataclass(frozen=True)
class CardFacts:
    """The kind-specific part of a dataset card and manifest (each kind builds its own)."""

    samples: list[Any]  # rows shown on the card
    stats: Any = None  # the kind's statistics (the card template reads its fields)
    per_type: list[Any] = field(default_factory=list)  # per-task yield table (negatives)
    no_positive: int = 0  # rows without a positive
    mode: str = ""  # generation mode shown on the card (negatives: edit | rewrite)
    manifest: dict[str, Any] = field(default_factory=dict)  # extra manifest sections, e.g. {"pairs": {...}}


@dataclass(frozen=True)
class Card:
    """Everything a dataset's README.md and manifest.json say: the one input of :func:`write_card`."""

    kind: str  # its filter section is filters.<kind>, its format contrastgen.<kind>/1
    anchor: str  # what the anchor of a row is called
    positive_task: str | None  # where set, a dropped positive leaves its anchor's rows (with no positive)
    schema: pa.Schema  # of the train and test shards
    tags: tuple[str, ...]
    template: Path  # the kind's card body (Jinja; includes card_filters.md and card_releases.md from here)
    cfg: Any  # the RunConfig
    summary: Any  # the run's Summary (counts)
    run_id: str | None
    engine: str
    prompts: dict[str, Any]  # template name -> loaded template (sha256, path)
    shards: list[ShardInfo]
    raw_parts: list[ShardInfo]
    plan: ShardInfo
    published: dict  # the publish record: settings hash and releases
    funnel: list[Any]  # FunnelStep of the filter stage
    filter_report: dict[str, Any]
    plots: list[str]  # histogram files in plots/
    facts: CardFacts


@dataclass(frozen=True)
class CardParams:
    """What a card body template sees as ``p``."""

    pretty_name: str
    version: str
    root: str
    run_id: str | None
    summary: Any
    per_type: list[Any]
    stats: Any
    samples: list[Any]
    no_positive: int
    engine: str
    model: str
    mode: str
    cfg: Any
    prompts: dict[str, str]
    config_yaml: str
    funnel: list[Any]
    filter_report: dict[str, Any]
    thresholds: dict[str, Any]  # the filter config the stage ran with, as data
    plots: list[str]
    releases: list[dict]
    kind: str
    anchor: str
    positive_task: str | None


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def _features(schema) -> list[dict[str, str]]:
    return [{"name": f.name, "dtype": _DTYPES.get(str(f.type), str(f.type))} for f in schema]


def _split_info(split: str, shards: list[ShardInfo]) -> dict[str, Any]:
    mine = [s for s in shards if s.split == split]
    return {"name": split, "num_bytes": sum(s.num_bytes for s in mine), "num_examples": sum(s.rows for s in mine)}


def front_matter(
    cfg, summary, shards: list[ShardInfo], schema: pa.Schema, kind: str, tags: tuple[str, ...]
) -> dict[str, Any]:
    splits = [s for s in summary.splits if summary.splits[s]]  # `datasets` refuses a declared split with no rows
    configs: list[dict[str, Any]] = [
        {"config_name": "rejected", "data_files": [{"split": "rejected", "path": "rejected/rejected-*.arrow"}]}
    ]
    infos = [
        {"config_name": "rejected", "features": _features(REJECTED_SCHEMA), "splits": [_split_info("rejected", shards)]}
    ]
    if splits:  # a run that kept no row still loads: its rejected config is then the only one
        configs.insert(
            0,
            {
                "config_name": "default",
                "default": True,
                "data_files": [{"split": s, "path": f"data/{s}-*.arrow"} for s in splits],
            },
        )
        infos.insert(
            0,
            {
                "config_name": "default",
                "features": _features(schema),
                "splits": [_split_info(s, shards) for s in splits],
            },
        )
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


COST_COLUMNS = (
    "type",
    "units",
    "kept",
    "yield",
    "output tokens / kept row",
    "engine-s / kept row",
    "money / 1,000 kept rows",
)


def cost_rows(cost: dict[str, Any]) -> list[tuple[str, ...]]:
    """A manifest's cost section (:mod:`pipeline.run.cost`) as the rows of the cost table by type that ``inspect`` and
    ``view`` show (:data:`COST_COLUMNS`), then one for all types; none for a dataset made before issue 35.

    >>> cost_rows({"by_type": [{"type": "a", "units": 4, "kept": 2, "yield": 0.5, "tokens_out_per_kept": 30.0,
    ...   "engine_s_per_kept": 0.25, "money_per_1k_kept": None}], "total": {"units": 6, "kept": 2}})
    [('a', '4', '2', '50.0%', '30', '0.25', 'n/a'), ('all', '6', '2', '', 'n/a', 'n/a', 'n/a')]
    """

    def na(x: Any) -> str:
        return "n/a" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)

    rows: list[tuple[str, ...]] = [
        (
            str(t["type"]),
            str(t["units"]),
            str(t["kept"]),
            "n/a" if t["yield"] is None else f"{100 * t['yield']:.1f}%",
            na(t["tokens_out_per_kept"]),
            na(t["engine_s_per_kept"]),
            na(t["money_per_1k_kept"]),
        )
        for t in cost.get("by_type", [])
    ]
    if "total" in cost:
        c = cost["total"]
        rows.append(
            (
                "all",
                str(c["units"]),
                str(c["kept"]),
                "",
                na(c.get("tokens_out_per_kept")),
                na(c.get("engine_s_per_kept")),
                na(c.get("money_per_1k_kept")),
            )
        )
    return rows


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


def finite(obj: Any) -> Any:
    """The report with NaN (a rate over no rows) as None, so manifest.json stays strict JSON."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return None if isinstance(obj, float) and obj != obj else obj


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:200]


def _render(template: Path, params: Any) -> str:
    """Render a card body; values are data (autoescape off, StrictUndefined: a missing field is an error)."""
    loader = jinja2.FileSystemLoader([template.parent, Path(__file__).parent])  # the shared parts live here
    env = jinja2.Environment(
        loader=loader, undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
    )
    env.filters["cell"] = _cell
    env.filters["rate"] = lambda x: "n/a" if x is None or x != x else f"{100 * x:.1f}%"
    env.filters["num"] = lambda x: "n/a" if x is None or x != x else f"{x:.3f}"
    env.filters["off"] = lambda x: "off" if x is None else x
    env.filters["off_na"] = lambda x: "n/a" if x is None else x
    env.filters["money"] = lambda x: "n/a" if x is None else f"{x:.4g}"
    env.filters["meaning"] = meaning  # a rejection reason's meaning (records.REASONS)
    return env.get_template(template.name).render(p=params)


def write_card(root: Path, card: Card) -> None:
    """README.md (Hugging Face front matter from a dict, body from the kind's template) and manifest.json (the
    commit point of a publish: written last), each atomically."""
    cfg_json = card.cfg.model_dump(mode="json")
    front = front_matter(card.cfg, card.summary, card.shards, card.schema, card.kind, card.tags)
    f = card.facts
    params = CardParams(
        pretty_name=front["pretty_name"],
        version=__version__,
        root=str(root),
        run_id=card.run_id,
        summary=card.summary,
        per_type=f.per_type,
        stats=f.stats,
        samples=f.samples,
        no_positive=f.no_positive,
        engine=card.engine,
        model=card.cfg.engine.model_id(),
        mode=f.mode,
        cfg=card.cfg,
        prompts={t: tpl.sha256 for t, tpl in card.prompts.items()},
        config_yaml=yaml.safe_dump(cfg_json, sort_keys=False),
        funnel=card.funnel,
        filter_report=card.filter_report,
        thresholds=cfg_json["filters"][card.kind],
        plots=card.plots,
        releases=card.published["releases"],
        kind=card.kind,
        anchor=card.anchor,
        positive_task=card.positive_task,
    )
    text = "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + _render(card.template, params)
    write_bytes_atomic(root / "README.md", text.encode("utf-8"))
    write_bytes_atomic(
        root / "manifest.json", (json.dumps(manifest(card), indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    )


def manifest(card: Card) -> dict[str, Any]:
    """The manifest: format and versions, the resolved config, prompt hashes, every shard and raw part with its
    sha256, the plan, the releases, the counts, the filter report, and the kind's own sections."""
    return {
        "format": dataset_format(card.kind),
        "contrastgen_version": __version__,
        "run_id": card.run_id,
        "config": card.cfg.model_dump(mode="json"),
        "versions": versions(),
        "prompts": {t: {"sha256": tpl.sha256, "file": tpl.path.name} for t, tpl in card.prompts.items()},
        "shards": [asdict(s) for s in card.shards],
        "raw_parts": [asdict(s) for s in card.raw_parts],
        "plan": asdict(card.plan),
        "publish": card.published,
        "counts": {k: v for k, v in asdict(card.summary).items() if k != "cost"},
        "cost": card.summary.cost,
        **card.facts.manifest,
        "filters": {
            "funnel": [asdict(f) for f in card.funnel],
            "report": finite(card.filter_report),
            "plots": [f"plots/{p}" for p in card.plots],
        },
    }
