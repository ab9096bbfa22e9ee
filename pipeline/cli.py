"""The `contrastgen` command line: flags map onto config fields (CLI > env > --config file > defaults).

Why one module of about 490 lines: every command's flags in one place, each command a short function that builds a
config and calls the package; the commands share their flag helpers and error handling."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, cast

from pipeline import stop
from pipeline.config import load_config
from pipeline.engines.config import ENGINE_KINDS
from pipeline.errors import OS_FIXES, ContrastgenError
from pipeline.kinds import KINDS
from pipeline.progress import quiet_libraries
from pipeline.train.losses import NAMES as LOSS_NAMES


def _commands_taking(common: argparse.ArgumentParser) -> type[argparse.Action]:
    """The sub-command action of a parser whose every command also takes ``common``'s flags (after the command)."""

    class Commands(argparse._SubParsersAction):
        def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
            return super().add_parser(name, parents=[common], **kwargs)

    return Commands


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show library logs and the traceback of an error (default: one line per error)",
    )
    p = argparse.ArgumentParser(
        prog="contrastgen", description="Contrastive training data made with LLMs.", parents=[common]
    )
    commands = _commands_taking(common)  # every command takes --verbose
    sub = p.add_subparsers(dest="command", required=True, action=commands)
    gen = sub.add_parser("generate", help="generate a dataset").add_subparsers(
        dest="kind", required=True, action=commands
    )
    for kind in KINDS.values():  # one `generate <kind>` command per registered kind, with the kind's own flags
        k = gen.add_parser(kind.name, help=kind.help)
        k.add_argument("--input", type=Path, help=kind.input_help)
        _run_flags(k)
        for f in kind.flags:
            k.add_argument(f.name, dest=f"{f.section}.{f.key}", **f.kwargs)
    flt = sub.add_parser("filter", help="rerun the filter stage on a dataset's raw generations (no LLM call)")
    flt.add_argument("dir", type=Path, metavar="DIR", help="a finished contrastgen dataset")
    flt.add_argument("--out", type=Path, required=True, metavar="DIR2", help="new dataset folder (DIR is not changed)")
    flt.add_argument("--config", type=Path, help="YAML with `filters:` (and `output:`) over DIR's saved config")
    flt.add_argument("--json", action="store_true", help="print one JSON summary object")
    ins = sub.add_parser("inspect", help="show what a dataset's card says")
    ins.add_argument("dir", type=Path)
    ins.add_argument("--json", action="store_true")
    vw = sub.add_parser(
        "view", help="browse a dataset in a local web page (rows with word diffs, rejected rows, funnel)"
    )
    vw.add_argument("dir", type=Path)
    vw.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    vw.add_argument("--port", type=int, default=8765)
    tr = sub.add_parser("train", help="train an encoder on the train split of contrastgen datasets")
    tr.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="contrastgen dataset folders")
    tr.add_argument("--out", type=Path, help="output sentence-transformers model folder")
    tr.add_argument(
        "--base", type=Path, help="base sentence-transformers model folder (default: bundled all-MiniLM-L6-v2)"
    )
    tr.add_argument(
        "--loss",
        nargs="+",
        metavar="NAME[=WEIGHT]",
        help=f"losses to combine (weight 1 unless given): {', '.join(LOSS_NAMES)}",
    )
    tr.add_argument("--batch-size", type=int, help="anchors per batch (global)")
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--lr", type=float)
    tr.add_argument("--grad-cache", type=int, metavar="CHUNK", help="GradCache with CHUNK texts per forward")
    tr.add_argument("--seed", type=int)
    tr.add_argument(
        "--retention",
        type=Path,
        metavar="FILE",
        help="STS-format file for the checkpoint check and the "
        "retention report (eval.retention); default: the bundled pairs",
    )
    tr.add_argument("--config", type=Path, help="YAML train config (flags and CONTRASTGEN_TRAIN_* env override it)")
    tr.add_argument("--json", action="store_true", help="print one JSON summary object")
    srv = sub.add_parser("serve", help="serve the embedded engine as an OpenAI-compatible API (for --engine openai)")
    srv.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--model-path", type=Path, help="a .gguf file or transformers folder (default: bundled SmolLM2)")
    srv.add_argument("--device", help="torch device (cpu, cuda)")
    srv.add_argument(
        "--workers",
        type=int,
        help="engine processes (ray.workers); default: one single-threaded process "
        "per core, at most 8, on CPU (the pipeline's layout); one on CUDA",
    )
    srv.add_argument("--config", type=Path, help="YAML run config; its `engine:` section is used")
    srv.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on every /v1 request (default: "
        "$CONTRASTGEN_API_KEY; needed for a --host other than loopback)",
    )
    srv.add_argument(
        "--max-body-bytes", type=int, default=1 << 20, help="refuse larger request bodies with 413 (default 1 MiB)"
    )
    dep = sub.add_parser(
        "deploy",
        help="serve Prefect deployments of the flows on cron/interval schedules (needs a Prefect API)",
        description="Reads a run file (YAML: deployments: [{name, kind, cron | interval, config, run}]), "
        "registers one Prefect deployment per entry and runs their scheduled and hand-triggered runs "
        "until stopped. Needs PREFECT_API_URL (e.g. `prefect server start`).",
    )
    dep.add_argument("run_file", type=Path, metavar="RUN_FILE")
    ev = sub.add_parser("evaluate", help="score a model on a dataset's held-out test split")
    ev.add_argument("model", type=Path, metavar="MODEL_DIR")
    ev.add_argument("dir", type=Path, metavar="DIR")
    ev.add_argument(
        "--retention",
        type=Path,
        metavar="FILE",
        help="STS-format file for the retention score (STS-B's "
        "sts-dev.csv, or JSONL of sentence1/sentence2/score); default: the bundled pairs",
    )
    ev.add_argument("--json", action="store_true")
    return p


def _run_flags(p: argparse.ArgumentParser) -> None:
    """The flags every generate command shares."""
    p.add_argument("--out", type=Path, help="output dataset directory")
    p.add_argument(
        "--engine",
        choices=[k for k in ENGINE_KINDS if k != "plugin"],  # a plugin also needs engine.plugin: set it in the file
        help="generation engine (default: embedded)",
    )
    p.add_argument("--base-url", help="openai engine: the server's /v1 root (default http://127.0.0.1:8000/v1)")
    p.add_argument("--limit", type=int, help="use only the first N valid input rows")
    p.add_argument("--seed", type=int, help="run seed")
    p.add_argument("--workers", type=int, help="engine actors")
    p.add_argument(
        "--clients", type=int, help="openai engine: Ray Data workers that generate and commit parts (ray.clients)"
    )
    p.add_argument("--ray-address", help="join a Ray cluster (auto, ray://host:port); default: local Ray")
    p.add_argument("--config", type=Path, help="YAML run config (flags and CONTRASTGEN_* env override it)")
    p.add_argument("--json", action="store_true", help="print one JSON summary object")
    p.add_argument(
        "--estimate",
        action="store_true",
        help="run a sample of the input (estimate.fraction, default 1%%, at most estimate.max_units units) in a "
        "throwaway folder and print the whole input's projected tokens, engine time, money and kept rows; "
        "nothing is written to --out",
    )
    p.add_argument("--estimate-fraction", type=float, help="share of input rows --estimate runs (estimate.fraction)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="write into a non-empty folder that is not a contrastgen dataset (your files there are never replaced)",
    )


def _loss_weights(specs: list[str] | None) -> dict[str, float] | None:
    """--loss names the whole combination: unnamed losses get weight 0 (settings sources deep-merge
    mappings, so a weight from the YAML file would otherwise survive)."""
    if not specs:
        return None
    out = dict.fromkeys(LOSS_NAMES, 0.0)
    for spec in specs:
        name, _, weight = spec.partition("=")
        try:
            out[name] = float(weight) if weight else 1.0
        except ValueError:
            raise ContrastgenError(
                f"--loss {spec}: expected NAME or NAME=WEIGHT with a number, got {weight!r}"
            ) from None
    return out


def _train_overrides(a: argparse.Namespace) -> dict[str, Any]:
    flags = {
        ("data", "dirs"): a.dirs,
        ("model", "out"): a.out,
        ("model", "base"): a.base,
        ("loss", "weights"): _loss_weights(a.loss),
        ("optim", "batch_size"): a.batch_size,
        ("optim", "epochs"): a.epochs,
        ("optim", "lr"): a.lr,
        ("optim", "grad_cache_chunk"): a.grad_cache,
        ("optim", "seed"): a.seed,
        ("eval", "retention"): a.retention,
    }
    return _nest(flags)


def _nest(flags: dict[tuple[str, str], Any]) -> dict[str, Any]:
    out: dict[str, dict[str, Any]] = {}
    for (section, key), value in flags.items():
        if value is not None:
            out.setdefault(section, {})[key] = value
    return out


def _overrides(a: argparse.Namespace) -> dict[str, Any]:
    flags = {
        ("input", "path"): a.input,
        ("input", "limit"): a.limit,
        ("output", "dir"): a.out,
        ("engine", "kind"): a.engine,
        **{(f.section, f.key): getattr(a, f"{f.section}.{f.key}") for f in KINDS[a.kind].flags},
        ("sampling", "seed"): a.seed,
        ("ray", "workers"): a.workers,
        ("ray", "clients"): a.clients,
        ("ray", "address"): a.ray_address,
        ("output", "overwrite"): a.overwrite,
        ("estimate", "fraction"): a.estimate_fraction,
    }
    out = _nest(flags)
    if a.base_url:
        out.setdefault("engine", {})["openai"] = {"base_url": a.base_url}
    return out


def _generate(a: argparse.Namespace) -> int:
    from pipeline.run.generate import preflight

    cfg = load_config(a.config, _overrides(a))
    preflight(KINDS[a.kind], cfg)
    if a.estimate:
        return _estimate(a, cfg)
    state = _run_flow(a, cfg)
    if state.is_cancelled():
        print(f"contrastgen: {state.message}", file=sys.stderr)
        return stop.exit_code(stop.asked() or signal.SIGINT)
    # a completed run's result is its summary: the flow returns a State only when stopped (Cancelled, handled above)
    summary = cast("dict[str, Any]", state.result())
    if a.json:
        print(json.dumps(summary))
    else:
        print(
            f"wrote {summary['kept']} {a.kind} rows ({summary['splits']}) to {summary['out']}; "
            f"generated {summary['generated']} units, reused {summary['reused']}, rejected {summary['rejected']}, "
            f"filtered {summary['filtered']}"
        )
    return _empty_is_an_error(summary, a.input)


def _estimate(a: argparse.Namespace, cfg) -> int:
    """``generate --estimate``: the sample run (pipeline.run.estimate) in a throwaway folder, then the forecast."""
    import shutil

    from pipeline.run import estimate
    from pipeline.run.generate import start

    sample_cfg, sample = estimate.plan(KINDS[a.kind], start(KINDS[a.kind], cfg))
    try:
        state = _run_flow(a, sample_cfg)
        if state.is_cancelled():
            print(f"contrastgen: {state.message}", file=sys.stderr)
            return stop.exit_code(stop.asked() or signal.SIGINT)
        forecast = estimate.project(sample, cast("dict[str, Any]", state.result()), cfg.engine.price)
    finally:
        shutil.rmtree(sample.folder, ignore_errors=True)
    if a.json:
        print(json.dumps({"estimate": forecast}))
    else:
        print("\n".join(estimate.lines(forecast)))
    return 0


def _run_flow(a: argparse.Namespace, cfg):
    """The generate flow on ``cfg``, with a local Ray started and stopped around it where none runs; its State."""
    # Ephemeral Prefect needs no server; its telemetry heartbeat only contends for the local sqlite file.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.generate import generate_flow
    from pipeline.engines.pool import ensure_ray, stop_ray

    if not getattr(a, "verbose", False):
        quiet_libraries()  # again: Ray's and Prefect's handlers exist now

    # a SIGINT or SIGTERM from here on is a stop (pipeline.stop): the flow ends Cancelled with the one line printed
    # below, and the finally stops the local Ray we started (its actors would otherwise outlive us)
    with stop.handling():
        started = ensure_ray(cfg.ray)  # every engine's parts stream through Ray Data workers
        try:
            state = generate_flow(a.kind, cfg.model_dump(mode="json"), return_state=True)
        finally:
            if started:
                stop_ray()
    return state


def _empty_is_an_error(summary: dict, source) -> int:
    """A run that wrote a valid but empty dataset still ends with one error line and exit 2: nothing was made."""
    if summary.get("empty"):
        print(
            f"contrastgen: error: {source or 'the input'}: expected rows to make a dataset from, found none: "
            f"{summary['empty']}. The dataset in {summary['out']} is valid but empty. Fix: check the input file and "
            "the input.*_column settings (`contrastgen inspect` shows the rejected rows by reason)",
            file=sys.stderr,
        )
        return 2
    return 0


def _filter(a: argparse.Namespace) -> int:
    from dataclasses import asdict

    from pipeline.run.refilter import refilter

    summary = asdict(refilter(a.dir, a.out, a.config))
    if a.json:
        print(json.dumps(summary))
    else:
        print(
            f"wrote {summary['kept']} rows ({summary['splits']}) to {summary['out']}; "
            f"filters dropped {summary['filtered']} rows; no LLM call"
        )
    return _empty_is_an_error(summary, a.dir)


def _train(a: argparse.Namespace) -> int:
    from pipeline.train.config import load_train_config
    from pipeline.train.report import print_train_summary, train_summary_dict
    from pipeline.train.run import run_train

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logging.getLogger("contrastgen").addHandler(handler)
    logging.getLogger("contrastgen").setLevel(logging.WARNING if a.json else logging.INFO)
    summary = run_train(load_train_config(a.config, _train_overrides(a)))
    if summary.after:  # rank 0 of a multi-process run, or the only process
        if a.json:
            print(json.dumps(train_summary_dict(summary)))
        else:
            print_train_summary(summary)
    return 0


def _evaluate(a: argparse.Namespace) -> int:
    from pipeline.train.report import print_eval
    from pipeline.train.run import run_evaluate

    report = run_evaluate(a.model, a.dir, retention_file=a.retention)
    if a.json:
        print(json.dumps(report.to_dict()))
    else:
        print_eval(report, f"{a.model} on {a.dir} (test split)")
    return 0


def _view(a: argparse.Namespace) -> int:
    from pipeline.view import Dataset, serve_view

    Dataset(a.dir)  # a folder that is not a dataset: one clear line before a server starts
    print(f"contrastgen view: {a.dir} at http://{a.host}:{a.port}/ (Ctrl-C stops it)", flush=True)
    serve_view(a.dir, a.host, a.port)
    return 0


def _inspect(a: argparse.Namespace) -> int:
    from pipeline.report import inspect_summary, print_report

    if a.json:
        print(json.dumps(inspect_summary(a.dir), ensure_ascii=False))
    else:
        print_report(a.dir)
    return 0


def _serve(a: argparse.Namespace) -> int:
    from pipeline.serve import api_key, check_exposure, serve

    key = api_key(a.api_key)
    check_exposure(a.host, key)
    cfg = load_config(
        a.config,
        _nest({("engine", "model_path"): a.model_path, ("engine", "device"): a.device, ("ray", "workers"): a.workers}),
    )
    print(
        f"contrastgen serve: loading {cfg.engine.model_id()} on {cfg.engine.device}; "
        f"API at http://{a.host}:{a.port}/v1 ({'API key required' if key else 'no API key: this machine only'})",
        flush=True,
    )
    serve(cfg, a.host, a.port, key, a.max_body_bytes)
    return 0


def _deploy(a: argparse.Namespace) -> int:
    from pipeline.deploy import deploy

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    deploy(a.run_file)
    return 0


COMMANDS = {
    "generate": _generate,
    "serve": _serve,
    "deploy": _deploy,
    "filter": _filter,
    "inspect": _inspect,
    "view": _view,
    "train": _train,
    "evaluate": _evaluate,
}


def user_error(exc: BaseException) -> str | None:
    """The one line a user gets for ``exc`` when it is theirs to fix (our errors, and file-system refusals:
    full disk, permissions, missing paths); None for anything else (a bug: its traceback is shown)."""
    if isinstance(exc, (ContrastgenError, stop.Stopped)):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in OS_FIXES:
        where = exc.filename if exc.filename is not None else "a file"
        return (
            f"{where}: expected to read or write it, but the system said: {os.strerror(exc.errno)}. Fix: "
            f"{OS_FIXES[exc.errno]}"
        )
    return None


class _QuietUserErrors(logging.Filter):
    """Prefect logs a failed task's or flow's traceback itself; for a user's mistake the CLI's one line is enough
    (``--verbose`` keeps them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and user_error(exc) is not None:
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_library_tracebacks() -> None:
    quiet = _QuietUserErrors()
    for name in ("prefect", "prefect.task_runs", "prefect.flow_runs", "prefect.flows", "prefect.tasks"):
        logging.getLogger(name).addFilter(quiet)
    for handler in logging.getLogger().handlers:
        handler.addFilter(quiet)


def main(argv: list[str] | None = None) -> int:
    """One command in this process (the console script, :mod:`pipeline.entry`, supervises generate and train first)."""
    a = _parser().parse_args(argv)
    verbose = bool(getattr(a, "verbose", False))
    if not verbose:
        _quiet_library_tracebacks()
        quiet_libraries()
        stop.quiet_after_stop()
    try:
        return COMMANDS[a.command](a)
    except stop.Stopped as exc:
        print(f"contrastgen: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"contrastgen: stopped by SIGINT; {stop.RESUME}", file=sys.stderr)
        return 130
    except Exception as exc:
        signum = stop.asked()
        if signum is not None:  # failed because of the stop (a server or worker the same signal ended): the stop
            if verbose:
                traceback.print_exc()
            print(f"contrastgen: {stop.Stopped(signum)}", file=sys.stderr)
            return stop.exit_code(signum)
        line = user_error(exc)
        if line is None:
            raise
        if verbose:
            traceback.print_exc()
        print(f"contrastgen: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
