"""Fault benchmark: one engine replica made slow, against the undisturbed run (issue 31, item 2).

    python bench/faults.py [--engine instant|embedded] [--units N] [--units-per-part K] [--replicas 2]
                           [--slow-s auto|SECONDS] [--rounds 2] [--max-tokens 8] [--no-warmup]
                           [--out-root DIR] [--keep] [--json]

The issue's goal: "one replica made slow (a fault-injection setting): total time at most 1.3x of the undisturbed
run". In one run of this script, for the same input and config, the real CLI runs in a subprocess

    contrastgen generate negatives --input FILE --out DIR --config YAML --json

(a fresh output folder each time) alternately undisturbed ("calm") and with ``engine.inject_slow_replica_s: S``
("slow": replica 0 waits S seconds before each engine call, a slow GPU or a noisy neighbour), ``--rounds`` times
each: calm, slow, calm, slow by default, so the two calm runs show the noise. Reported per run: the summary's
``generation_seconds`` (the stage that routing decides; plan, engine start-up and finalize are the same work in
both) and the CLI's wall time; then mean slow / mean calm generation seconds with PASS/FAIL against 1.3, the
wall-time ratio beside it, and ``--json``'s one JSON object as the last line of stdout.

Engines (``--engine``):

- ``instant`` (default): ``bench/instant_engine.py`` (INSTANT ENGINE, benchmarks only; labelled as such) inside
  the pipeline's own Ray engine replicas (``engine: {kind: plugin, plugin: "instant_engine:InstantEngine"}``, with
  ``bench/`` and this checkout's root on the CLI's ``PYTHONPATH``, as ``bench/scale.py --engine instant``): an
  engine call costs nothing, so what is measured is the routing and the pipeline around it. Each replica's calls
  are counted (``CONTRASTGEN_INSTANT_STATS``) and printed (the slow replica should take few parts), with the
  window from the first engine call to the last (the generation stage less Ray Data's start).
- ``embedded``: the real bundled SmolLM2 with ``--max-tokens`` (default 8) on a few captions: replicas that do
  real, CPU-bound work (one torch thread each on one core each).

Default setup: 2 replicas (``ray.workers: 2``, one call at a time each), small parts (``output.units_per_part``)
so that there are many of them and where they go matters, and one block (at most ``output.block_sources`` = 4,096
captions). ``--slow-s auto`` (default) picks S after the first calm run, so that static ``index % n`` routing
(part i to replica i % n, the old dispatcher) would have taken about 2x the calm generation time:
replica 0 would hold ceil(P / n) of the P parts and sleep S before each, on top of its own share of the work.

- instant: a replica's own work per part is about nil, so S = 2 x T_calm / ceil(P / n): the sleeps alone take
  2 x T_calm;
- embedded: the replicas set the pace, each busy about T_calm with its ceil(P / n) parts, so S = T_calm /
  ceil(P / n) (one part's time on a replica): sleeps plus work about 2 x T_calm.

Printed beside the measurement: static routing's cost as a reasoned lower bound, ceil(P / n) x S (replica 0's
sleeps, one call at a time, ignoring its work); and for engines whose replicas set the pace the best any routing
can do, n / (n - 1 + t / (t + S)) x T_calm with t = T_calm / ceil(P / n) (replica 0 works at t / (t + S) of its
speed; t from the calm time over-states a part's time, which only lowers this bound). With 2 replicas and S >= t
that bound is at least 1.33x: the 1.3x goal then holds only where the other replicas have room to spare (the
instant engine, or many replicas: 16 with one at half speed can do 1.03x).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import instant_engine
from scale import TASKS, build_stub_encoder, checkout, cli_env, write_captions

GOAL = 1.3
STATIC_X = 2.0  # what static routing would have taken, in calm generation times, with the auto S
BLOCK_SOURCES = 4096  # output.block_sources' default: one block, so part indices (and static routing) are one sequence
DEFAULTS = {"instant": {"units": 1800, "units_per_part": 9}, "embedded": {"units": 72, "units_per_part": 2}}
LABELS = {
    "instant": f"{instant_engine.LABEL} in the Ray engine replicas (no LLM)",
    "embedded": "embedded engine: bundled SmolLM2-135M-Instruct, int8, on CPU",
}


def config(path: Path, args, encoder: Path, cache: Path, slow_s: float) -> None:
    """The run's config (JSON is YAML); the two runs differ only in ``engine.inject_slow_replica_s``."""
    engine: dict = {"inject_slow_replica_s": slow_s}
    if args.engine == "instant":
        engine.update(kind="plugin", plugin="instant_engine:InstantEngine")
    else:
        engine.update(kind="embedded")
    cfg = {
        "engine": engine,
        "ray": {"workers": args.replicas},
        "output": {"units_per_part": args.units_per_part},
        # the filter stage's model scorers off, as bench/scale.py: finalize is the same in both runs, kept short
        "filters": {
            "negatives": {
                "semantic": {"enabled": False, "cache_dir": str(cache), "model": str(encoder), "batch_size": 1024},
                "blind": {"scorers": ["bigram"]},
            }
        },
    }
    if args.engine == "embedded":
        cfg["sampling"] = {"max_tokens": args.max_tokens}
    path.write_text(json.dumps(cfg, indent=2) + "\n")


def loadavg() -> tuple[float, float, float]:
    return tuple(float(x) for x in Path("/proc/loadavg").read_text().split()[:3])


def _json_line(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        if line.strip().startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def run_cli(label: str, root: Path, inp: Path, args, encoder: Path, slow_s: float) -> dict:
    """One CLI run in a fresh folder: its summary's seconds, wall time, and (instant) calls per replica."""
    work = root / label
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg, out, cache, stats = work / "run.yaml", work / "dataset", work / "scores-cache", work / "instant-stats"
    config(cfg, args, encoder, cache, slow_s)
    env = cli_env(uuid.uuid4().hex, cache, root)
    if args.engine == "instant":
        stats.mkdir()
        env[instant_engine.STATS_ENV] = str(stats)
    cli = [
        str(Path(sys.executable).parent / "contrastgen"),
        "generate",
        "negatives",
        "--input",
        str(inp),
        "--out",
        str(out),
        "--config",
        str(cfg),
        "--json",
    ]
    load0 = loadavg()
    t0 = time.time()
    with (work / "cli.stdout").open("wb") as so, (work / "cli.stderr").open("wb") as se:
        proc = subprocess.Popen(cli, stdout=so, stderr=se, env=env, cwd=str(work))
        try:
            rc = proc.wait(args.max_minutes * 60)
        except subprocess.TimeoutExpired:  # SIGTERM first: the CLI then stops the Ray it started
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            rc = None
    wall = time.time() - t0
    summary = _json_line((work / "cli.stdout").read_text(errors="replace")) if rc == 0 else None
    res = {
        "label": label,
        "slow_s": slow_s,
        "returncode": rc,
        "wall_seconds": round(wall, 2),
        "load_before": load0,
        "load_after": loadavg(),
        "ok": summary is not None,
    }
    if summary:
        res.update(
            {
                k: summary.get(k)
                for k in (
                    "units",
                    "generated",
                    "kept",
                    "plan_seconds",
                    "startup_seconds",
                    "generation_seconds",
                    "finalize_seconds",
                )
            }
        )
    else:
        res["stderr_tail"] = (work / "cli.stderr").read_text(errors="replace")[-3000:]
    if args.engine == "instant":
        reps = [json.loads(p.read_text()) for p in stats.glob("*.json")]
        res["calls_per_replica"] = sorted((r["calls"] for r in reps), reverse=True)
        st = instant_engine.read_stats(stats)  # the replicas' clock: first call's start to last call's end
        if st["first_call"] and st["last_call"]:
            res["call_window_seconds"] = round(st["last_call"] - st["first_call"], 2)
    return res


def auto_slow_s(engine: str, calm_gen: float, parts_on_0: int) -> float:
    """S such that static routing would have taken about STATIC_X x the calm generation time (module doc)."""
    per = calm_gen / parts_on_0
    return round(STATIC_X * per if engine == "instant" else (STATIC_X - 1.0) * per, 3)


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--engine",
        choices=sorted(LABELS),
        default="instant",
        help="instant: bench/instant_engine.py (bench only) in the replicas; embedded: the bundled SmolLM2",
    )
    ap.add_argument(
        "--units", type=int, default=None, help="units wanted (9 a caption); default instant 1800, embedded 72"
    )
    ap.add_argument(
        "--units-per-part", type=int, default=None, help="output.units_per_part; default instant 9, embedded 2"
    )
    ap.add_argument("--replicas", type=int, default=2, help="ray.workers: engine replicas")
    ap.add_argument(
        "--slow-s", default="auto", help="engine.inject_slow_replica_s of the slow runs, or auto (module doc)"
    )
    ap.add_argument("--rounds", type=int, default=2, help="calm/slow pairs, alternating")
    ap.add_argument("--max-tokens", type=int, default=8, help="--engine embedded: sampling.max_tokens")
    ap.add_argument("--max-minutes", type=float, default=20.0, help="per CLI run")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed 18-unit calm run first")
    ap.add_argument(
        "--out-root", type=Path, default=None, help="work folder (default: a new temp folder, removed after)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    args = ap.parse_args(argv)
    args.units = args.units or DEFAULTS[args.engine]["units"]
    args.units_per_part = args.units_per_part or DEFAULTS[args.engine]["units_per_part"]
    captions = math.ceil(args.units / len(TASKS))
    if captions > BLOCK_SOURCES:
        ap.error(
            f"--units: at most {BLOCK_SOURCES * len(TASKS)} (one block of {BLOCK_SOURCES} captions), got {args.units}"
        )
    fixed_s = None if args.slow_s == "auto" else float(args.slow_s)

    own_root = args.out_root is None
    root = Path(tempfile.mkdtemp(prefix="contrastgen-faults-")) if own_root else args.out_root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    try:
        encoder = build_stub_encoder(root / "stub-encoder")
        inp = root / "captions.jsonl"
        write_captions(inp, captions)
        code = checkout()
        print(
            f"faults benchmark: {LABELS[args.engine]}; {captions} captions, {args.replicas} replicas, "
            f"units_per_part {args.units_per_part}; checkout {code['commit']}"
            + (f" (+{len(code['pipeline_changes'])} uncommitted pipeline files)" if code["pipeline_changes"] else ""),
            flush=True,
        )
        if not args.no_warmup:  # Prefect's database, the OS file cache, the model file: paid before anything is timed
            w_inp = root / "warmup.jsonl"
            write_captions(w_inp, 2)
            w = run_cli("warmup", root, w_inp, args, encoder, 0.0)
            print(
                f"warm-up (18 units, untimed): {'ok' if w['ok'] else 'FAILED'}, {w['wall_seconds']:.1f} s", flush=True
            )
        slow_s = fixed_s
        parts = parts_on_0 = None
        for r in range(args.rounds):
            for mode in ("calm", "slow"):
                if mode == "slow" and slow_s is None:
                    calm0 = runs[0]
                    if not calm0["ok"]:
                        raise SystemExit(
                            f"the first calm run failed (exit {calm0['returncode']}):\n{calm0.get('stderr_tail')}"
                        )
                    slow_s = auto_slow_s(args.engine, calm0["generation_seconds"], parts_on_0)
                    print(
                        f"  S = {slow_s:g} s (auto: static routing would take about {STATIC_X:g}x the first calm "
                        "run's generation time)",
                        flush=True,
                    )
                res = run_cli(f"{mode}{r + 1}", root, inp, args, encoder, 0.0 if mode == "calm" else slow_s)
                res["mode"] = mode
                runs.append(res)
                if parts is None and res["ok"]:
                    parts = math.ceil(res["units"] / args.units_per_part)
                    parts_on_0 = math.ceil(parts / args.replicas)
                gen = res.get("generation_seconds")
                print(
                    f"  {res['label']:<6} S={res['slow_s']:<6g} generation {gen if gen is None else f'{gen:.2f}'} s, "
                    f"wall {res['wall_seconds']:.1f} s"
                    + (
                        f", engine calls {res.get('call_window_seconds')} s from first to last, calls per replica "
                        f"{res['calls_per_replica']}"
                        if "calls_per_replica" in res
                        else ""
                    )
                    + f", load {res['load_before'][0]:.2f} -> {res['load_after'][0]:.2f}"
                    + ("" if res["ok"] else f"  FAILED (exit {res['returncode']})"),
                    flush=True,
                )
        result = report(runs, args, slow_s, parts, parts_on_0)
        result.update(
            {
                "engine": args.engine,
                "label": LABELS[args.engine],
                "captions": captions,
                "replicas": args.replicas,
                "units_per_part": args.units_per_part,
                "checkout": code,
                "max_tokens": args.max_tokens if args.engine == "embedded" else None,
                "cpus": os.cpu_count(),
                "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                "runs": runs,
            }
        )
        if args.json:
            print(json.dumps(result), flush=True)
        return 0 if result["verdict"] == "PASS" else 1
    finally:
        if own_root and not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def report(runs: list[dict], args, slow_s: float | None, parts: int | None, parts_on_0: int | None) -> dict:
    calm = [r["generation_seconds"] for r in runs if r["mode"] == "calm" and r["ok"]]
    slow = [r["generation_seconds"] for r in runs if r["mode"] == "slow" and r["ok"]]
    calm_w = [r["wall_seconds"] for r in runs if r["mode"] == "calm" and r["ok"]]
    slow_w = [r["wall_seconds"] for r in runs if r["mode"] == "slow" and r["ok"]]
    failed = [r["label"] for r in runs if not r["ok"]]
    out: dict = {
        "slow_s": slow_s,
        "parts": parts,
        "parts_on_replica_0_static": parts_on_0,
        "goal": GOAL,
        "failed_runs": failed,
    }
    print(
        f"\nOne replica made slow: {LABELS[args.engine]}; {args.replicas} replicas, {parts} parts of "
        f"{args.units_per_part} units, S = {slow_s} s before each call on replica 0"
    )
    if not calm or not slow:
        out.update(verdict="FAIL", reason="no successful calm and slow run")
        print(f"FAIL: runs failed: {failed}")
        for r in runs:
            if not r["ok"]:
                print(f"--- {r['label']} stderr tail:\n{r.get('stderr_tail', '')}")
        return out
    mc, ms = _mean(calm), _mean(slow)
    ratio, wall_ratio = ms / mc, _mean(slow_w) / _mean(calm_w)
    pairs = [round(s / c, 3) for c, s in zip(calm, slow)]
    noise = max(calm) / min(calm)
    static_lb = parts_on_0 * slow_s
    out.update(
        calm_generation_seconds=calm,
        slow_generation_seconds=slow,
        ratio=round(ratio, 3),
        pair_ratios=pairs,
        calm_spread=round(noise, 3),
        wall_ratio=round(wall_ratio, 3),
        static_lower_bound_s=round(static_lb, 2),
        static_lower_bound_ratio=round(static_lb / mc, 3),
        verdict="PASS" if ratio <= GOAL and not failed else "FAIL",
    )
    print(
        f"  generation_seconds calm {', '.join(f'{x:.2f}' for x in calm)} (spread {noise:.2f}x); "
        f"slow {', '.join(f'{x:.2f}' for x in slow)}"
    )
    print(
        f"  slow / calm (means): {ratio:.3f}x  (pairs in run order: {', '.join(f'{p:.3f}' for p in pairs)}; "
        f"CLI wall time {wall_ratio:.3f}x)"
    )
    print(
        f"  static index % n routing, lower bound: {parts_on_0} parts on replica 0 x {slow_s:g} s = {static_lb:.1f} s "
        f"= {static_lb / mc:.2f}x the calm generation time (its sleeps alone, one call at a time"
        + (f", plus its share of the work: about {(static_lb + mc) / mc:.2f}x)" if args.engine == "embedded" else ")")
    )
    if args.engine == "embedded":
        t = mc / parts_on_0
        best = args.replicas / (args.replicas - 1 + t / (t + slow_s))
        out["capacity_bound_ratio"] = round(best, 3)
        print(
            f"  if the replicas alone set the pace, no routing beats {best:.2f}x (replica 0 at t/(t+S) of its "
            f"speed, t <= {t:.2f} s a part)"
        )
    else:
        slow_calls = [r["calls_per_replica"] for r in runs if r["mode"] == "slow" and r["ok"]]
        out["slow_calls_per_replica"] = slow_calls
        print(f"  calls per replica in the slow runs: {slow_calls} (the slow replica is the one with few)")
        win = {
            m: [r["call_window_seconds"] for r in runs if r["mode"] == m and r.get("call_window_seconds")]
            for m in ("calm", "slow")
        }
        if win["calm"] and win["slow"]:
            out["call_window_ratio"] = round(_mean(win["slow"]) / _mean(win["calm"]), 3)
            print(
                f"  engine calls, first to last (the stage less Ray Data's start): calm "
                f"{', '.join(f'{x:.2f}' for x in win['calm'])} s, slow {', '.join(f'{x:.2f}' for x in win['slow'])} s: "
                f"{out['call_window_ratio']:.3f}x"
            )
    load = [r["load_before"][0] for r in runs] + [runs[-1]["load_after"][0]]
    out["load_1min"] = load
    print(
        f"  1-minute load average at each run's start and the end: {', '.join(f'{x:.2f}' for x in load)} "
        f"({os.cpu_count()} CPUs)"
    )
    print(
        f"goal: slow / calm generation time <= {GOAL}: {out['verdict']} ({ratio:.3f}x)"
        + (f"; failed runs: {failed}" if failed else "")
    )
    return out


if __name__ == "__main__":
    sys.exit(main())
