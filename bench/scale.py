"""Scale benchmark: the real pipeline end to end at N units, with a load generator in place of the LLM.

    python bench/scale.py [--units 10000 100000 1000000] [--out-root DIR] [--max-minutes 60]
                          [--json-out bench/scale_results.json] [--encoder stub|real] [--keep] [--clients N]
                          [--engine openai|instant] [--replicas N] [--json]

For each N it writes ceil(N / 9) synthetic captions (the 8 negative types and the paraphrase are 9 tasks per
caption), starts ``bench/loadserver.py`` (LOAD GENERATOR, benchmarks only; not an engine) on a free 127.0.0.1
port, and runs the public CLI in a subprocess, exactly as a user would:

    contrastgen generate negatives --engine openai --base-url URL --input FILE --out DIR --config YAML --json

so it keeps working when the pipeline behind the CLI is rewritten (on Ray Data, say). Nothing of the pipeline
is imported for the runs; the JSON summary's timing fields are read if present.

Two paths (``--engine``):

- ``openai`` (default): the openai engine's HTTP client (in the driver, or in ``--clients N`` Ray Data workers)
  against the load generator, as above.
- ``instant``: the engine-actor path. The CLI runs without ``--engine`` and its config sets
  ``engine: {kind: plugin, plugin: "instant_engine:InstantEngine"}`` (and ``ray.workers: --replicas``), so
  ``bench/instant_engine.py`` (INSTANT ENGINE, benchmarks only) answers every request at once inside the
  pipeline's own Ray engine replicas, with the load generator's texts. No LLM and no HTTP: what is measured is
  the pipeline's own cost. Its rows are labelled "instant engine (bench only)". The replicas import it because
  the CLI's ``PYTHONPATH`` holds ``bench/`` (and this checkout's root, so the CLI and its workers run the
  ``pipeline`` next to this file, whichever one the virtual environment has installed); the local Ray the
  CLI starts hands that environment to its workers. A cluster started elsewhere (``--ray-address``) would
  need it in its own environment or a ``runtime_env``.

Measured per N: wall seconds per stage from the summary (``plan_seconds``, ``startup_seconds``,
``generation_seconds``, ``finalize_seconds``) and units/s; peak RSS of the driver (the CLI process) and of
every other process of the run (its process tree, and any process whose command line mentions Ray and whose
environment carries this run's marker, so a concurrent test's Ray is never counted), polled every 0.5 s.
A process's overall peak is its kernel high-water mark (``VmHWM``); a stage's peak is the highest sampled
RSS within the stage's wall-clock window (a rise of ``VmHWM`` between two polls counts at its height). The
windows come from the load generator's clock: CLI start -> first request (plan, including interpreter and
Prefect start), -> first task request (engine start-up), -> last response (generation), -> CLI exit
(finalize); on the instant path the replicas' own clock (``CONTRASTGEN_INSTANT_STATS``) gives the same three
marks: the first replica built, its first call, the last call's end. CPU seconds per process group (driver,
workers, load generator) are reported beside them.

``driver_cpu_s_per_unit``: the driver's (the CLI process's own, children excluded) user+sys CPU seconds for the
whole run, plan to publish, divided by the units; the CLI is waited for without being reaped, so its CPU times
are read exactly once it has exited. Per stage, the same from the driver's CPU time polled with the RSS,
interpolated at the stage windows' edges (``stages.<stage>.driver_cpu_s``; the part outside the windows is
nil: the windows run from the CLI's start to its exit). ``--json`` prints the whole result as one JSON object on
the last line of stdout, after the report.

The filter stage's model scorers are kept out of the runs: ``filters.negatives.semantic.enabled: false``
and ``blind.scorers: [bigram]`` (dedup, surface, blind(bigram) and propensity stay on). The stage still
embeds every distinct text with ``semantic.model`` whatever ``semantic.enabled`` says (it is a propensity
feature and the ``semantic_sim`` column), so by default (``--encoder stub``) that model is a stub built here:
all-MiniLM-L6-v2 with its 6 transformer layers removed (its own tokenizer, token embeddings and mean pooling,
the same 384-dim output), so the embedding matrix the stage holds has its real size while the model's compute
is near zero. ``--encoder real`` uses the bundled MiniLM itself. The real scorers' throughput is measured
separately (texts/s of the MiniLM embedder and of the SmolLM2 log-likelihood scorer on 200 fresh texts, after
the model is loaded) and projected to 1M texts.

Goals (issue 16, on a 2-core box): 1M units end to end with peak RSS under 3 GB in every process; memory at
1M at most 1.5x that at 100k; time per unit at 1M within 1.2x of that at 100k. The ratios are printed, with
PASS/FAIL, for every pair of sizes 10x apart. A size that runs past --max-minutes is killed and reported as
"did not finish in M minutes" (a result, not a crash).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import instant_engine
import loadserver
import psutil

TASKS = (
    "reshuffle_order",
    "swap_obj",
    "swap_att",
    "replace_att",
    "replace_obj",
    "replace_rel",
    "add_obj",
    "add_att",
    "paraphrase",
)
STAGES = ("plan", "startup", "generation", "finalize")
GB3_MB = 3 * 1024
MEM_RATIO_GOAL, TIME_RATIO_GOAL = 1.5, 1.2
MARKER = "CONTRASTGEN_SCALE_BENCH_RUN"
PATHS = {
    "openai": "openai engine against the LOAD GENERATOR (no LLM)",
    "instant": f"{instant_engine.LABEL} in the Ray engine replicas (no LLM)",
}

# ----------------------------------------------------------------------------------------------- captions

L = loadserver.LEXICON
# Caption shapes, 6 to 14 words; every slot's words come from one part of speech of the load generator's lexicon.
SHAPES = (
    ("a {colour} {agent} {prep} the {place}", ("colour", "agent", "prep", "place")),
    ("a {colour} {agent} {verb} a {quality} {object}", ("colour", "agent", "verb", "quality", "object")),
    (
        "a {colour} {agent} {verb} a {quality} {object} {prep} the {place}",
        ("colour", "agent", "verb", "quality", "object", "prep", "place"),
    ),
    (
        "the {colour} {agent} {verb} a {quality} {object} {prep} the {place} {time}",
        ("colour", "agent", "verb", "quality", "object", "prep", "place", "time"),
    ),
    (
        "a {colour} {agent} {verb} a {quality} {object} {prep} the {place} while a {agent2} watches",
        ("colour", "agent", "verb", "quality", "object", "prep", "place", "agent2"),
    ),
)
STRIDE = 1_000_003  # a prime: j -> j * STRIDE mod size is a bijection for sizes made of 2, 3, 5 and 7


def _size(slots: tuple[str, ...]) -> int:
    return math.prod(len(L[s.rstrip("2")]) for s in slots)


def caption(i: int) -> str:
    """The i-th synthetic caption; distinct for distinct i (each shape's slots are a mixed-radix number)."""
    shape = i % len(SHAPES)
    j = i // len(SHAPES)
    text, slots = SHAPES[shape]
    size = _size(slots)
    if j >= size:
        raise ValueError(f"caption {i}: shape {shape} holds {size} captions; use fewer units")
    k = (j * STRIDE + 7919 * (shape + 1)) % size  # neighbours differ in every slot
    values = {}
    for s in slots:
        words = L[s.rstrip("2")]
        k, r = divmod(k, len(words))
        values[s] = words[r]
    out = text.format(**values)
    return out[:1].upper() + out[1:] + "."


def write_captions(path: Path, n: int) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"s{i:08d}", "caption": caption(i)}) + "\n")


# ----------------------------------------------------------------------------------------------- stub encoder


def build_stub_encoder(folder: Path) -> Path:
    """all-MiniLM-L6-v2 without its transformer layers: the same tokenizer, vocabulary embeddings, mean pooling and
    384-dim normalised output, with near-zero compute. Saved as a sentence-transformers folder."""
    if (folder / "modules.json").exists():
        return folder
    from sentence_transformers import SentenceTransformer
    from torch import nn

    from pipeline.config import bundled_encoder

    model = SentenceTransformer(str(bundled_encoder()), device="cpu")
    bert = model[0].auto_model
    bert.encoder.layer = nn.ModuleList()
    bert.config.num_hidden_layers = 0
    model.save(str(folder))
    (folder / "STUB.txt").write_text(
        "bench/scale.py stub encoder: all-MiniLM-L6-v2 with 0 transformer layers "
        "(benchmark only; its embeddings are not meaningful)\n"
    )
    return folder


# ----------------------------------------------------------------------------------------------- process monitor


def _status(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in kB from /proc/<pid>/status, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            rss = hwm = 0
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1])
            return rss, hwm
    except (OSError, ValueError, IndexError):
        return None


def classify(cmdline: list[str], name: str) -> str:
    joined = " ".join(cmdline)
    if name.startswith("ray::") or joined.startswith("ray::") or "default_worker.py" in joined:
        return "ray_worker"
    if any(s in joined for s in ("raylet", "gcs_server", "ray/dashboard", "ray/_private", "ray/autoscaler", "/ray/")):
        return "ray_system"
    if "prefect" in joined:
        return "prefect"
    return "other"


class Proc:
    def __init__(self, pid: int, group: str, cmd: str):
        self.pid, self.group, self.cmd = pid, group, cmd
        self.hwm_kb = self.last_hwm_kb = 0
        self.cpu_s = 0.0
        self.samples: list[tuple[float, int]] = []  # (time, peak kB in the interval ending then)
        self.cpu_samples: list[tuple[float, float]] = []  # (time, user+sys CPU seconds so far)
        try:
            self.handle = psutil.Process(pid)
        except psutil.Error:
            self.handle = None

    def poll(self, now: float) -> bool:
        st = _status(self.pid)
        if st is None or not st[1]:
            return False
        rss, hwm = st
        peak = (
            hwm if hwm > self.last_hwm_kb else rss
        )  # the high-water mark rose since the last poll: it was reached now
        self.last_hwm_kb = self.hwm_kb = max(self.hwm_kb, hwm)
        self.samples.append((now, peak))
        if self.handle is not None:
            try:
                t = self.handle.cpu_times()
                self.cpu_s = t.user + t.system
                self.cpu_samples.append((now, self.cpu_s))
            except psutil.Error:
                pass
        return True

    def cpu_at(self, t: float) -> float:
        """CPU seconds used by time ``t``, interpolated between the samples around it."""
        pts = self.cpu_samples
        if not pts or t <= pts[0][0]:
            return pts[0][1] if pts else 0.0
        for (ta, ca), (tb, cb) in zip(pts, pts[1:]):
            if ta <= t <= tb:
                return ca + (cb - ca) * ((t - ta) / (tb - ta) if tb > ta else 1.0)
        return pts[-1][1]


class Monitor:
    """Polls the RSS of the CLI's process tree, of Ray processes carrying ``MARKER=token``, and of the load
    generator."""

    def __init__(self, root_pid: int, token: str, loadgen_pid: int | None, interval: float = 0.5):
        self.root, self.token, self.interval = root_pid, token, interval
        self.procs: dict[int, Proc] = {}
        self.seen_env: dict[int, bool] = {}
        self._stop = threading.Event()
        self._add(root_pid, "driver")
        self.driver = self.procs.get(root_pid)
        if self.driver is not None:
            self.driver.cpu_samples.append((time.time(), 0.0))  # just started
        if loadgen_pid is not None:
            self._add(loadgen_pid, "loadgen")
        self.thread = threading.Thread(target=self._run, name="rss-monitor", daemon=True)

    def _add(self, pid: int, group: str | None = None) -> None:
        if pid in self.procs:
            return
        try:
            p = psutil.Process(pid)
            cmd, name = p.cmdline(), p.name()
        except psutil.Error:
            return
        self.procs[pid] = Proc(pid, group or classify(cmd, name), " ".join(cmd)[:160])

    def _discover(self, full: bool) -> None:
        try:
            for child in psutil.Process(self.root).children(recursive=True):
                self._add(child.pid)
        except psutil.Error:
            pass
        if not full:
            return
        for p in psutil.process_iter(["pid", "name", "cmdline"]):
            pid = p.info["pid"]
            if pid in self.procs or self.seen_env.get(pid) is False:
                continue
            text = " ".join(p.info["cmdline"] or []) + " " + (p.info["name"] or "")
            if "ray" not in text:
                continue
            try:
                ours = p.environ().get(MARKER) == self.token
            except psutil.Error:
                ours = False
            self.seen_env[pid] = ours
            if ours:
                self._add(pid)

    def _run(self) -> None:
        tick = 0
        while not self._stop.is_set():
            self._discover(full=tick % 4 == 0)
            now = time.time()
            for proc in self.procs.values():
                proc.poll(now)
            tick += 1
            self._stop.wait(self.interval)

    def start(self) -> Monitor:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)
        now = time.time()
        for proc in self.procs.values():
            proc.poll(now)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.group != "loadgen"]

    def peak_mb(self, groups: tuple[str, ...], start: float | None = None, end: float | None = None) -> float | None:
        """Highest RSS of any one process in ``groups``: its VmHWM overall, or the samples inside [start, end]."""
        best = None
        for p in self.procs.values():
            if p.group not in groups:
                continue
            if start is None:
                val = p.hwm_kb
            else:  # a sample covers the poll interval that ends at it: the first one after ``end`` covers the tail
                inside = [kb for t, kb in p.samples if start <= t <= end]
                inside += [kb for t, kb in p.samples if t > end][:1]
                val = max(inside) if inside else None
            if val:
                best = max(best or 0, val)
        return None if best is None else round(best / 1024, 1)

    def report(self) -> dict:
        groups: dict[str, dict] = {}
        for p in self.procs.values():
            g = groups.setdefault(p.group, {"processes": 0, "peak_rss_mb": 0.0, "cpu_seconds": 0.0, "largest": ""})
            g["processes"] += 1
            g["cpu_seconds"] = round(g["cpu_seconds"] + p.cpu_s, 1)
            if p.hwm_kb / 1024 >= g["peak_rss_mb"]:
                g["peak_rss_mb"], g["largest"] = round(p.hwm_kb / 1024, 1), p.cmd
        return groups


WORKERS = ("ray_worker", "ray_system", "prefect", "other")  # every process of the run but the driver


# ----------------------------------------------------------------------------------------------- one run


def config_yaml(
    path: Path,
    encoder: Path | None,
    cache: Path,
    concurrency: int,
    engine: str = "openai",
    replicas: int | None = None,
    block_sources: int | None = None,
    units_per_part: int | None = None,
) -> None:
    semantic = {"enabled": False, "cache_dir": str(cache)}
    if encoder is not None:  # the stub's cost is per batch, not per text: big batches keep it out of the way
        semantic.update(model=str(encoder), batch_size=1024)
    cfg = {
        "engine": (
            {"kind": "openai", "openai": {"concurrency": concurrency, "structured": "auto"}}
            if engine == "openai"
            else {"kind": "plugin", "plugin": "instant_engine:InstantEngine"}
        ),
        "filters": {
            "negatives": {
                "semantic": semantic,
                "blind": {"scorers": ["bigram"]},
                "dedup": {"enabled": True},
                "surface": {"enabled": True},
                "propensity": {"enabled": True},
            }
        },
    }
    if engine == "instant" and replicas:
        cfg["ray"] = {"workers": replicas}
    output = {"block_sources": block_sources, "units_per_part": units_per_part}
    if any(output.values()):
        cfg["output"] = {k: v for k, v in output.items() if v}
    path.write_text(json.dumps(cfg, indent=2) + "\n")  # JSON is YAML


def cli_env(token: str, cache: Path, root: Path) -> dict:
    """The CLI's environment: this run's marker, and this checkout's root and ``bench/`` first on ``PYTHONPATH``
    (the CLI and the Ray workers it starts import this checkout's ``pipeline`` and the instant engine)."""
    path = os.pathsep.join([str(REPO), str(REPO / "bench")] + [x for x in [os.environ.get("PYTHONPATH")] if x])
    return {
        **os.environ,
        MARKER: token,
        "CONTRASTGEN_CACHE": str(cache),
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": path,
    }


def imported_pipeline(env: dict) -> str:
    """Where the CLI's interpreter, in ``env``, imports ``pipeline`` from (a check that a worktree runs its own)."""
    out = subprocess.run(
        [sys.executable, "-c", "import pipeline; print(pipeline.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    return out.stdout.strip() or out.stderr.strip()[-300:]


def checkout() -> dict:
    """This checkout's commit, and the files of the pipeline's code changed from it (a run of uncommitted code)."""

    def git(*a: str) -> str:
        out = subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "pipeline", "flows", "prompts").splitlines()
    return {"repo": str(REPO), "commit": git("rev-parse", "--short", "HEAD"), "pipeline_changes": changed}


def wait_unreaped(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for ``proc`` to exit without reaping it, so its own CPU times can still be read; False on timeout."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
            return True
        time.sleep(0.05)
    return False


def own_cpu_s(pid: int) -> float | None:
    """user+sys CPU seconds of the process itself (not its children); works on an unreaped (zombie) process."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return t.user + t.system


def _kill(monitor: Monitor | None, proc: subprocess.Popen) -> None:
    """SIGTERM the CLI (it stops the Ray it started; its Prefect server must outlive it, so not the whole group),
    then, after 30 s, SIGKILL every process of the run that is left, by pid."""
    try:
        proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        pass
    for pid in monitor.pids() if monitor else [proc.pid]:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass
    proc.wait()


def _json_line(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def _du_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1) if path.exists() else 0.0


def run_size(units_wanted: int, root: Path, args, encoder: Path | None, label: str | None = None) -> dict:
    n_captions = math.ceil(units_wanted / len(TASKS))
    units = n_captions * len(TASKS)
    work = root / (label or f"n{units_wanted}")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    inp, cfg, out, cache = work / "captions.jsonl", work / "run.yaml", work / "dataset", work / "scores-cache"
    instant = args.engine == "instant"
    t = time.perf_counter()
    write_captions(inp, n_captions)
    config_yaml(
        cfg, encoder, cache, args.concurrency, args.engine, args.replicas, args.block_sources, args.units_per_part
    )
    result: dict = {
        "units_requested": units_wanted,
        "captions": n_captions,
        "units": units,
        "engine": args.engine,
        "path": PATHS[args.engine],
        "input_seconds": round(time.perf_counter() - t, 2),
    }

    token = uuid.uuid4().hex
    env = cli_env(token, cache, root)
    # the CLI without its supervisor (pipeline/stop.py): the measured driver is the process that runs the pipeline,
    # and a checkout from before the supervisor runs the same way
    cli = [sys.executable, "-m", "pipeline.cli", "generate", "negatives"]
    if instant:  # the engine is the config's (engine.kind plugin); the replicas' clock goes to stats_dir
        server, url, stats_dir = None, None, work / "instant-stats"
        stats_dir.mkdir()
        env.update({instant_engine.STATS_ENV: str(stats_dir), instant_engine.INVALID_RATE_ENV: str(args.invalid_rate)})
    else:
        server, url = loadserver.start_in_subprocess(invalid_rate=args.invalid_rate, log=work / "loadserver.log")
        cli += ["--engine", "openai", "--base-url", url]
    cli += ["--input", str(inp), "--out", str(out), "--config", str(cfg), "--json"]
    if args.clients:
        cli += [
            "--clients",
            str(args.clients),
        ]  # parts generated and committed by Ray Data workers (pipeline.run.stream)
    result["command"] = " ".join(cli)
    with (work / "cli.stdout").open("wb") as so, (work / "cli.stderr").open("wb") as se:
        t0 = time.time()
        proc = subprocess.Popen(cli, stdout=so, stderr=se, env=env, cwd=str(work), start_new_session=True)
        monitor = Monitor(proc.pid, token, server.pid if server else None, args.poll).start()
        finished = wait_unreaped(proc, args.max_minutes * 60)
        t1 = time.time()
        driver_cpu = own_cpu_s(proc.pid) if finished else None  # exact: the CLI has exited and is not reaped yet
        if finished:
            rc = proc.wait()
        else:
            _kill(monitor, proc)
            rc = proc.returncode
    monitor.stop()
    if driver_cpu is None and monitor.driver is not None:
        driver_cpu = monitor.driver.cpu_s  # killed: its last poll
    if monitor.driver is not None and driver_cpu is not None:
        monitor.driver.cpu_samples.append((t1, driver_cpu))
    if instant:
        st = instant_engine.read_stats(stats_dir)
        stats = {
            "first_request": st["built"],
            "first_task_request": st["first_call"],
            "last_response": st["last_call"],
            "requests": st["requests"],
            "task_requests": st["requests"],
            "samples": None,
            "errors": None,
            "other_requests": 0,
            "calls": st["calls"],
            "replicas": st["replicas"],
        }
    else:
        try:
            stats = loadserver.stats(url)
        except OSError:
            stats = {}
        server.terminate()  # after monitor.stop(): its last poll read the load generator's CPU time
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
    summary = _json_line((work / "cli.stdout").read_text(errors="replace"))
    result.update(
        {
            "finished": finished,
            "returncode": rc,
            "wall_seconds": round(t1 - t0, 2),
            "status": "ok"
            if finished and rc == 0 and summary
            else (f"did not finish in {args.max_minutes:g} minutes" if not finished else f"failed (exit code {rc})"),
            "loadgen" if not instant else "instant_engine": {
                k: stats.get(k)
                for k in ("requests", "task_requests", "other_requests", "errors", "samples", "calls", "replicas")
                if k in stats
            },
        }
    )
    if finished and (rc != 0 or not summary):
        result["stderr_tail"] = (work / "cli.stderr").read_text(errors="replace")[-3000:]

    # stage windows on the load generator's (or the replicas') clock: time.time() on this machine
    first, first_task = stats.get("first_request"), stats.get("first_task_request")
    last = stats.get("last_response")
    bounds = {
        "plan": (t0, first or t1),
        "startup": (first or t1, first_task or first or t1),
        "generation": (first_task or t1, last or t1),
        "finalize": (last or t1, t1),
    }
    cpu_at = monitor.driver.cpu_at if monitor.driver is not None else (lambda _t: 0.0)
    stages = {}
    for st in STAGES:
        a, b = bounds[st]
        secs = (summary or {}).get(f"{st}_seconds")
        cpu = max(0.0, cpu_at(b) - cpu_at(a))
        stages[st] = {
            "seconds": secs,
            "window_seconds": round(max(0.0, b - a), 2),
            "units_per_s": round(units / secs, 1) if secs else None,
            "driver_peak_mb": monitor.peak_mb(("driver",), a, b),
            "workers_peak_mb": monitor.peak_mb(WORKERS, a, b),
            "driver_cpu_s": round(cpu, 2),
            "driver_cpu_s_per_unit": round(cpu / units, 7),
        }
    result["stages"] = stages
    result["total"] = {
        "seconds": result["wall_seconds"],
        "units_per_s": round(units / result["wall_seconds"], 1),
        "driver_peak_mb": monitor.peak_mb(("driver",)),
        "workers_peak_mb": monitor.peak_mb(WORKERS),
        "loadgen_peak_mb": monitor.peak_mb(("loadgen",)),
        "seconds_per_unit": result["wall_seconds"] / units,
    }
    result["driver_cpu_s"] = None if driver_cpu is None else round(driver_cpu, 2)
    result["driver_cpu_s_per_unit"] = None if driver_cpu is None else round(driver_cpu / units, 7)
    result["driver_cpu_exact"] = finished  # read from the exited CLI; a killed run has its last poll's value
    result["processes"] = monitor.report()
    if "driver" in result["processes"] and driver_cpu is not None:
        result["processes"]["driver"]["cpu_seconds"] = round(driver_cpu, 1)
    if summary:
        neg_units = n_captions * (len(TASKS) - 1)
        result["summary"] = {
            k: summary.get(k)
            for k in (
                "units",
                "generated",
                "reused",
                "kept",
                "rejected",
                "filtered",
                "positives",
                "splits",
                "rejected_by_reason",
                "tokens_out",
                "plan_seconds",
                "startup_seconds",
                "generation_seconds",
                "finalize_seconds",
                "empty",
            )
        }
        result["kept_fraction_of_negative_units"] = round((summary.get("kept") or 0) / neg_units, 4)
    result["dataset_mb"] = _du_mb(out)
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    return result


# ----------------------------------------------------------------------------------------------- scorers


def scoring_throughput(n_texts: int, largest_texts: int | None) -> dict:
    """texts/s of the filter stage's real scorers (MiniLM embeddings; SmolLM2 mean log-likelihood) on fresh texts,
    after one small untimed batch has loaded each model; projected hours for 1M texts."""
    import torch

    from pipeline.config import FilterConfig, bundled_gguf
    from pipeline.filters.scorers import TextScorers

    texts = [caption(5 * (2_000_000 + i) + 2) for i in range(n_texts + 16)]  # 10-word shape, unlike the runs'
    out: dict = {"texts": n_texts, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="scale-scores-") as tmp:
        scorers = TextScorers(FilterConfig(), bundled_gguf(), cache_root=Path(tmp))
        for name, fn in (("minilm_embed", scorers.embed), ("lm_loglik", scorers.lm)):
            t = time.perf_counter()
            fn(texts[:8])  # loads the model
            load = time.perf_counter() - t
            t = time.perf_counter()
            fn(texts[16 : 16 + n_texts])
            secs = time.perf_counter() - t
            rate = n_texts / secs
            out[name] = {
                "load_seconds": round(load, 2),
                "seconds": round(secs, 2),
                "texts_per_s": round(rate, 1),
                "hours_per_1m_texts": round(1e6 / rate / 3600, 2),
            }
            if largest_texts:
                out[name]["hours_at_largest_run"] = round(largest_texts / rate / 3600, 2)
    return out


# ----------------------------------------------------------------------------------------------- report


def _f(x, fmt="{:,.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def ratios(results: list[dict]) -> list[dict]:
    """Every pair of sizes about 10x apart: memory and time-per-unit ratios against the goals."""
    out = []
    for small in results:
        for big in results:
            if not 8 <= big["units"] / small["units"] <= 12:
                continue
            row = {"small_units": small["units"], "large_units": big["units"]}
            if small["status"] != "ok" or big["status"] != "ok":
                row["verdict"] = f"FAIL ({big['status'] if big['status'] != 'ok' else small['status']})"
                out.append(row)
                continue
            for who in ("driver", "workers"):
                a, b = small["total"][f"{who}_peak_mb"], big["total"][f"{who}_peak_mb"]
                if a and b:
                    r = b / a
                    row[f"{who}_rss_ratio"] = round(r, 3)
                    row[f"{who}_rss_verdict"] = "PASS" if r <= MEM_RATIO_GOAL else "FAIL"
            r = big["total"]["seconds_per_unit"] / small["total"]["seconds_per_unit"]
            row["time_per_unit_ratio"] = round(r, 3)
            row["time_per_unit_verdict"] = "PASS" if r <= TIME_RATIO_GOAL else "FAIL"
            out.append(row)
    return out


def print_report(
    results: list[dict],
    rat: list[dict],
    scoring: dict | None,
    encoder_label: str,
    clients: int = 0,
    engine: str = "openai",
    replicas: int | None = None,
) -> None:
    if engine == "instant":
        print(
            f"\nScale benchmark: contrastgen generate negatives with the {instant_engine.LABEL} (no LLM, no HTTP) in "
            f"{replicas or 'the default number of'} Ray engine replicas (engine.kind plugin); filter scorers: semantic "
            f"off, blind [bigram], encoder {encoder_label}"
        )
    else:
        print(
            f"\nScale benchmark: contrastgen generate negatives --engine openai against the LOAD GENERATOR "
            f"(no LLM); filter scorers: semantic off, blind [bigram], encoder {encoder_label}; parts committed by "
            f"{f'{clients} Ray Data client workers' if clients else 'the driver'}"
        )
    head = f"{'N units':>10}  {'stage':<11} {'seconds':>9} {'units/s':>10} {'driver MB':>10} {'workers MB':>11}"
    print(head)
    print("-" * len(head))
    for r in results:
        n = f"{r['units']:,}"
        for st in STAGES:
            s = r["stages"][st]
            print(
                f"{n:>10}  {st:<11} {_f(s['seconds'], '{:,.2f}'):>9} {_f(s['units_per_s'], '{:,.0f}'):>10} "
                f"{_f(s['driver_peak_mb']):>10} {_f(s['workers_peak_mb']):>11}"
            )
            n = ""
        staged = [r["stages"][st]["seconds"] for st in STAGES]
        if all(x is not None for x in staged):
            print(
                f"{'':>10}  {'outside':<11} {_f(r['wall_seconds'] - sum(staged), '{:,.2f}'):>9} {'':>10} {'':>10} "
                f"{'':>11}"
                "   (CLI start, Prefect start and stop, exit)"
            )
        t = r["total"]
        print(
            f"{'':>10}  {'total (CLI)':<11} {_f(t['seconds'], '{:,.2f}'):>9} {_f(t['units_per_s'], '{:,.0f}'):>10} "
            f"{_f(t['driver_peak_mb']):>10} {_f(t['workers_peak_mb']):>11}   {r['status']}"
            + (f"  [{instant_engine.LABEL}]" if r.get("engine") == "instant" else "")
        )
    print(
        "\nseconds: the summary's *_seconds (total: the CLI process's wall time); MB: peak RSS of the driver / of the "
        "largest other process of the run (stage rows: sampled within the stage's wall-clock window; total: VmHWM)"
    )
    for r in results:
        procs = ", ".join(
            f"{g} x{v['processes']} {v['peak_rss_mb']:,.0f} MB {v['cpu_seconds']:,.1f} cpu-s"
            for g, v in sorted(r["processes"].items())
        )
        tag = f" ({instant_engine.LABEL})" if r.get("engine") == "instant" else ""
        print(f"\nN={r['units']:,}{tag}: {r['status']}; processes: {procs}; dataset {r['dataset_mb']:,.1f} MB on disk")
        if not r["finished"]:
            who = "the instant engine" if r.get("engine") == "instant" else "the load generator"
            done = (r.get("loadgen") or r.get("instant_engine") or {}).get("task_requests") or 0
            print(f"  {who} had answered {done:,} of {r['units']:,} units when the run was stopped")
        if r.get("driver_cpu_s") is not None:
            per = ", ".join(f"{st} {1e6 * r['stages'][st]['driver_cpu_s_per_unit']:,.0f}" for st in STAGES)
            print(
                f"  driver CPU (the CLI process, user+sys): {r['driver_cpu_s']:,.2f} s = "
                f"{1e6 * r['driver_cpu_s_per_unit']:,.0f} us a unit for the whole run"
                f"{'' if r.get('driver_cpu_exact') else ' (last poll: the run was killed)'}; by stage (us a unit): "
                f"{per}"
            )
        s = r.get("summary")
        if s:
            neg = r["captions"] * (len(TASKS) - 1)
            print(
                f"  kept {s['kept']:,} of {neg:,} negative units ({100 * r['kept_fraction_of_negative_units']:.1f}%), "
                f"positives {s['positives']:,}, rejected {s['rejected']:,}, filtered {s['filtered']:,}, "
                f"splits {s['splits']}"
            )
            print(f"  rejected by reason: {s['rejected_by_reason']}")
            if s.get("empty"):
                print(f"  EMPTY: {s['empty']}")
        if r.get("stderr_tail"):
            print("  stderr tail:\n" + r["stderr_tail"])
        every = max(r["total"]["driver_peak_mb"] or 0, r["total"]["workers_peak_mb"] or 0)
        print(
            f"  goal: every process under 3 GB: {'PASS' if every < GB3_MB and r['status'] == 'ok' else 'FAIL'} "
            f"(largest {every:,.0f} MB)"
        )
    if rat:
        print("\nGoals between sizes 10x apart (memory <= 1.5x, time per unit <= 1.2x):")
        for row in rat:
            if "verdict" in row:
                print(f"  {row['small_units']:,} -> {row['large_units']:,}: {row['verdict']}")
                continue
            parts = [
                f"{who} RSS x{row[f'{who}_rss_ratio']:.2f} {row[f'{who}_rss_verdict']}"
                for who in ("driver", "workers")
                if f"{who}_rss_ratio" in row
            ]
            parts.append(f"time/unit x{row['time_per_unit_ratio']:.2f} {row['time_per_unit_verdict']}")
            print(f"  {row['small_units']:,} -> {row['large_units']:,}: " + "; ".join(parts))
    else:
        print("\n(no two sizes 10x apart: no ratios)")
    if scoring:
        print(
            f"\nModel scorers, measured separately ({scoring['texts']} fresh texts, {scoring['torch_threads']} torch "
            f"threads):"
        )
        for name in ("minilm_embed", "lm_loglik"):
            v = scoring[name]
            extra = (
                f", {v['hours_at_largest_run']:.2f} h for the largest run's texts"
                if "hours_at_largest_run" in v
                else ""
            )
            print(
                f"  {name:<13} {v['texts_per_s']:>8,.1f} texts/s -> "
                f"{v['hours_per_1m_texts']:.2f} h per 1M texts{extra} "
                f"(model load {v['load_seconds']:.1f} s)"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--units", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument(
        "--out-root", type=Path, default=None, help="work folder (default: a new temp folder, removed after)"
    )
    ap.add_argument("--max-minutes", type=float, default=60.0, help="per size; a run past it is killed and reported")
    ap.add_argument("--json-out", type=Path, default=REPO / "bench" / "scale_results.json")
    ap.add_argument(
        "--encoder",
        choices=["stub", "real"],
        default="stub",
        help="model the filter stage embeds texts with (it always does): a 0-layer MiniLM stub, or MiniLM",
    )
    ap.add_argument("--invalid-rate", type=float, default=0.1, help="units the load generator answers invalidly")
    ap.add_argument("--concurrency", type=int, default=256, help="engine.openai.concurrency")
    ap.add_argument(
        "--clients",
        type=int,
        default=0,
        help="ray.clients: Ray Data workers that generate and commit the parts (0: the driver's client)",
    )
    ap.add_argument(
        "--engine",
        choices=sorted(PATHS),
        default="openai",
        help="openai: the openai engine against the load generator; instant: the engine-actor path with "
        "bench/instant_engine.py (bench only) in the Ray engine replicas",
    )
    ap.add_argument(
        "--replicas",
        type=int,
        default=2,
        help="--engine instant: engine replicas (ray.workers); 0: the pipeline's default",
    )
    ap.add_argument(
        "--block-sources",
        type=int,
        default=None,
        help="output.block_sources (default: the pipeline's, 4,096 captions a block); a run of several "
        "blocks finalizes them on Ray tasks",
    )
    ap.add_argument(
        "--units-per-part",
        type=int,
        default=None,
        help="output.units_per_part (default: the engine's: 64 for the instant engine's batch of 32, 256 "
        "for vLLM's default 256 sequences at n=2)",
    )
    ap.add_argument("--json", action="store_true", help="print the whole result as one JSON object on the last line")
    ap.add_argument("--poll", type=float, default=0.5, help="seconds between RSS polls")
    ap.add_argument("--scoring-texts", type=int, default=200)
    ap.add_argument("--skip-scoring", action="store_true")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed 18-unit run before the sizes")
    ap.add_argument("--keep", action="store_true", help="keep the datasets and score caches")
    args = ap.parse_args(argv)
    if args.engine == "instant" and args.clients:
        ap.error("--clients is the openai engine's (Ray Data HTTP clients); --engine instant runs in engine replicas")

    own_root = args.out_root is None
    root = Path(tempfile.mkdtemp(prefix="contrastgen-scale-")) if own_root else args.out_root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    try:
        encoder = build_stub_encoder(root / "stub-encoder") if args.encoder == "stub" else None
        pipeline_at, code = imported_pipeline(cli_env("check", root / "scores-cache", root)), checkout()
        print(
            f"the CLI imports pipeline from {pipeline_at}; checkout {code['commit']}"
            + (
                f" with {len(code['pipeline_changes'])} uncommitted changes in pipeline/, flows/, prompts/"
                if code["pipeline_changes"]
                else ""
            ),
            flush=True,
        )
        if not args.no_warmup:  # Prefect's database, the OS file cache: paid once, before anything is timed
            w = run_size(18, root, args, encoder, label="warmup")
            print(f"warm-up (18 units, untimed): {w['status']}, {w['wall_seconds']:.1f} s", flush=True)
        for n in args.units:
            print(f"running {n:,} units ...", flush=True)
            r = run_size(n, root, args, encoder)
            results.append(r)
            print(f"  {r['status']}: {r['wall_seconds']:,.1f} s", flush=True)
        scoring = None
        if not args.skip_scoring:
            largest = max((r for r in results), key=lambda r: r["units"], default=None)
            texts = largest["captions"] * (len(TASKS) - 1) + 2 * largest["captions"] if largest else None
            scoring = scoring_throughput(args.scoring_texts, texts)
        rat = ratios(results)
        print_report(
            results,
            rat,
            scoring,
            "stub (0-layer MiniLM)" if encoder else "all-MiniLM-L6-v2",
            args.clients,
            args.engine,
            args.replicas,
        )
        payload = {
            "machine": {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "engine": args.engine,
            "path": PATHS[args.engine],
            "replicas": args.replicas if args.engine == "instant" else None,
            "pipeline": pipeline_at,
            "checkout": code,
            "encoder": args.encoder,
            "invalid_rate": args.invalid_rate,
            "concurrency": args.concurrency,
            "clients": args.clients,
            "max_minutes": args.max_minutes,
            "results": results,
            "ratios": rat,
            "scoring": scoring,
            "goals": {"rss_mb_max": GB3_MB, "rss_ratio_max": MEM_RATIO_GOAL, "time_ratio_max": TIME_RATIO_GOAL},
        }
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.json_out}")
        if args.json:
            print(json.dumps(payload), flush=True)
    finally:
        if own_root and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
