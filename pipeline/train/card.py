"""The model card (README.md in the model folder) and ``contrastgen_train.json``.

The body renders from ``model_card_template.md`` with a typed :class:`ModelCardParams`; the front matter
is dumped from a dict by PyYAML.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import yaml

from pipeline import __version__
from pipeline.shards.card import load_manifest, versions
from pipeline.shards.writer import write_bytes_atomic
from pipeline.train.config import BUNDLED_ENCODER_ID, TrainConfig
from pipeline.train.losses import loss
from pipeline.train.report import train_summary_dict

if TYPE_CHECKING:
    from pipeline.train.summary import TrainSummary

_TEMPLATE = Path(__file__).with_name("model_card_template.md")


@dataclass(frozen=True)
class ModelCardParams:
    name: str
    version: str
    base: str
    out: str
    datasets: list[dict[str, Any]]
    train_groups: int
    val_groups: int
    no_positive: int
    losses: list[dict[str, Any]]
    result: Any
    evals: list[dict[str, Any]]
    cfg: TrainConfig
    config_yaml: str


def _base_license(base: Path) -> str | None:
    """The base model's license from its card's front matter: a fine-tune inherits it."""
    card = base / "README.md"
    if not card.is_file():
        return None
    parts = card.read_text(encoding="utf-8").split("---", 2)
    try:
        meta = yaml.safe_load(parts[1]) if len(parts) == 3 else None
    except yaml.YAMLError:
        return None
    return meta.get("license") if isinstance(meta, dict) else None


def _dataset_meta(d: str) -> dict[str, Any]:
    meta = load_manifest(Path(d))
    return {
        "dir": d,
        "train_rows": meta.get("counts", {}).get("splits", {}).get("train"),
        "pretty_name": Path(meta.get("config", {}).get("input", {}).get("path") or "").name,
    }


def _eval_rows(before, after) -> list[dict[str, Any]]:
    b = {t.neg_type: t for t in before.per_type} | {"all": before.overall}
    a = {t.neg_type: t for t in after.per_type} | {"all": after.overall}
    return [
        {
            "neg_type": k,
            "rows": a[k].rows,
            "before": b[k].acc,
            "after": a[k].acc,
            "margin_before": b[k].margin,
            "margin_after": a[k].margin,
        }
        for k in a
    ]


def write_model_card(cfg: TrainConfig, s: TrainSummary) -> None:
    out = Path(s.out)
    cfg_json = cfg.model_dump(mode="json")
    base = str(cfg.model.resolved_base())
    params = ModelCardParams(
        name=out.name,
        version=__version__,
        base=base,
        out=str(out),
        datasets=[_dataset_meta(d) for d in s.before],
        train_groups=len(s.data.train),
        val_groups=len(s.data.val),
        no_positive=s.data.no_positive,
        losses=[{"name": n, "weight": w, "paper": loss(n).paper} for n, w in cfg.loss.weights.items() if w > 0],
        result=s.result,
        evals=[
            {"dir": d, "before": s.before[d], "after": s.after[d], "rows": _eval_rows(s.before[d], s.after[d])}
            for d in s.before
            if d in s.after
        ],  # none when a stop skipped the evaluation after training
        cfg=cfg,
        config_yaml=yaml.safe_dump(cfg_json, sort_keys=False),
    )
    front = {
        "library_name": "sentence-transformers",
        "pipeline_tag": "sentence-similarity",
        "tags": ["sentence-transformers", "contrastgen", "hard-negatives", "compositionality"],
        "base_model": BUNDLED_ENCODER_ID if cfg.model.base is None else Path(base).name,
        "datasets": [str(d) for d in s.before],
    }
    license_ = _base_license(Path(base))
    if license_:
        front["license"] = license_
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    body = env.from_string(_TEMPLATE.read_text(encoding="utf-8")).render(p=params)
    write_bytes_atomic(
        out / "README.md", ("---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + body).encode("utf-8")
    )
    record = {"format": "contrastgen.model/1", "config": cfg_json, "versions": versions(), **train_summary_dict(s)}
    write_bytes_atomic(out / "contrastgen_train.json", (json.dumps(record, indent=2) + "\n").encode("utf-8"))
