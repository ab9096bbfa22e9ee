"""The `contrastgen` command line: flags map onto config fields (CLI > env > --config file > defaults)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from pipeline.config import NegType, load_config
from pipeline.errors import ContrastgenError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="contrastgen", description="Contrastive training data made with LLMs.")
    sub = p.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate a dataset").add_subparsers(dest="kind", required=True)
    neg = gen.add_parser("negatives", help="typed negative captions + paraphrase positives")
    neg.add_argument("--input", type=Path, help="captions file (.jsonl/.csv/.parquet) or datasets folder")
    neg.add_argument("--out", type=Path, help="output dataset directory")
    neg.add_argument("--engine", choices=["embedded"], help="generation engine (default: embedded)")
    neg.add_argument("--types", nargs="+", choices=[t.value for t in NegType], metavar="TYPE",
                     help=f"negative types (default: all): {', '.join(t.value for t in NegType)}")
    neg.add_argument("--mode", choices=["edit", "rewrite"], help="edit (model names the edit) or rewrite")
    neg.add_argument("--limit", type=int, help="use only the first N valid captions")
    neg.add_argument("--seed", type=int, help="run seed")
    neg.add_argument("--workers", type=int, help="engine actors")
    neg.add_argument("--ray-address", help="join a Ray cluster (auto, ray://host:port); default: local Ray")
    neg.add_argument("--config", type=Path, help="YAML run config (flags and CONTRASTGEN_* env override it)")
    neg.add_argument("--json", action="store_true", help="print one JSON summary object")
    ins = sub.add_parser("inspect", help="show what a dataset's card says")
    ins.add_argument("dir", type=Path)
    ins.add_argument("--json", action="store_true")
    return p


def _overrides(a: argparse.Namespace) -> dict[str, Any]:
    flags = {
        ("input", "path"): a.input, ("input", "limit"): a.limit, ("output", "dir"): a.out,
        ("engine", "kind"): a.engine, ("negatives", "types"): a.types, ("negatives", "mode"): a.mode,
        ("sampling", "seed"): a.seed, ("ray", "workers"): a.workers, ("ray", "address"): a.ray_address,
    }
    out: dict[str, dict[str, Any]] = {}
    for (section, key), value in flags.items():
        if value is not None:
            out.setdefault(section, {})[key] = value
    return out


def _generate_negatives(a: argparse.Namespace) -> int:
    from pipeline.run.negatives import preflight

    cfg = load_config(a.config, _overrides(a))
    preflight(cfg)
    # Ephemeral Prefect needs no server; its telemetry heartbeat only contends for the local sqlite file.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if a.json:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    import ray

    from flows.negatives import negatives_flow
    from pipeline.engines.pool import ensure_ray

    # SIGTERM becomes SystemExit so the finally below stops the local Ray we started (its actors would
    # otherwise outlive us and keep burning CPU). After SIGKILL nothing runs: `ray stop` cleans up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = ensure_ray(cfg.ray)
    try:
        summary = negatives_flow(cfg.model_dump(mode="json"))
    finally:
        if started:
            ray.shutdown()
    if a.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {summary['kept']} negatives ({summary['splits']}) to {summary['out']}; "
              f"generated {summary['generated']} units, reused {summary['reused']}, rejected {summary['rejected']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        if a.command == "generate":
            return _generate_negatives(a)
        from pipeline.report import inspect_summary, print_report

        if a.json:
            print(json.dumps(inspect_summary(a.dir), ensure_ascii=False))
        else:
            print_report(a.dir)
        return 0
    except ContrastgenError as exc:
        print(f"contrastgen: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
