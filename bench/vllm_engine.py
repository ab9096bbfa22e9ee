"""The vllm engine: the whole pipeline vs bare ``LLM.chat`` on the same prompts, and vLLM vs the embedded engine.

    .venv-vllm/bin/python bench/vllm_engine.py [--captions 16] [--device cpu|cuda] [--model DIR] [--tp 1]
                                               [--no-embedded] [--json]

All in one run, on the negatives flow's own parts (the demo's prompts and sampling, COCO captions from
../shared or the bundled sample):
- bare: ``vllm.LLM`` in this process, one ``LLM.chat`` per part with per-request ``SamplingParams`` (measured
  before and after the pipeline, so drift on a shared machine shows);
- pipeline: ``contrastgen generate negatives --engine vllm`` in-process (Prefect flow -> Ray actor holding
  ``vllm.LLM`` -> raw parts -> finalize), tok/s over its generation phase;
- embedded (CPU only): the embedded transformers engine on the same parts.
Engines run one at a time (each is shut down before the next starts). With ``--json`` the last line is one
object: bare_tok_s, pipeline_tok_s, ratio (goal >= 0.95), embedded_tok_s, vllm_over_embedded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from generation import captions_file, requests  # noqa: E402

from pipeline.config import load_config  # noqa: E402


def bare_vllm(cfg, parts) -> tuple[int, float]:
    """Bare ``LLM.chat`` per part: tokens out and seconds (the model load is not timed)."""
    import vllm

    from pipeline.engines.vllm_engine import llm_kwargs, sampling_params

    llm = vllm.LLM(**llm_kwargs(cfg.engine))
    llm.chat([[{"role": "user", "content": "Hi"}]], vllm.SamplingParams(max_tokens=2), use_tqdm=False)  # warm-up
    t0, tokens = time.perf_counter(), 0
    for part in parts:
        outs = llm.chat([[{"role": r, "content": c} for r, c in q.messages] for q in part],
                        sampling_params=[sampling_params(vllm, q.sampling, True) for q in part], use_tqdm=False)
        tokens += sum(len(o.token_ids) for out in outs for o in out.outputs)
    sec = time.perf_counter() - t0
    llm.llm_engine.engine_core.shutdown()
    return tokens, sec


def embedded(cfg, parts) -> tuple[int, float]:
    from pipeline.engines.embedded import EmbeddedEngine

    engine = EmbeddedEngine(load_config(None, {}).engine)
    engine.warmup()
    t0 = time.perf_counter()
    tokens = sum(c.tokens_out for part in parts for c in engine.generate(part))
    return tokens, time.perf_counter() - t0


def pipeline(cfg) -> dict:
    import ray

    from flows.generate import generate_flow
    from pipeline.engines.pool import ensure_ray

    ensure_ray(cfg.ray)
    try:
        return generate_flow("negatives", cfg.model_dump(mode="json"))
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--captions", type=int, default=16)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--model", help="a transformers model folder (default: the bundled SmolLM2, converted once)")
    ap.add_argument("--tp", type=int, default=1, help="tensor_parallel_size (GPUs per replica)")
    ap.add_argument("--no-embedded", action="store_true", help="skip the embedded engine (GPU machines)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vllm_section = {"device": a.device, "tensor_parallel_size": a.tp, **({"model": a.model} if a.model else {})}
        cfg = load_config(None, {"input": {"path": captions_file(a.captions, tmp)}, "output": {"dir": tmp / "out"},
                                 "engine": {"kind": "vllm", "vllm": vllm_section, "start_timeout_s": 1200}})
        parts = requests("negatives", cfg)  # the pipeline's own parts, rendered in-process
        print(f"{sum(map(len, parts))} requests in {len(parts)} parts ({a.captions} captions), vllm on {a.device}", flush=True)
        tok, sec = bare_vllm(cfg, parts)
        rates = [tok / sec]
        print(f"bare LLM.chat (before): {tok} tokens in {sec:.1f}s = {tok / sec:.1f} tok/s", flush=True)
        s = pipeline(cfg)
        p_rate = s["tokens_out"] / s["generation_seconds"]
        print(f"pipeline: {s['tokens_out']} tokens in {s['generation_seconds']:.1f}s of generation = {p_rate:.1f} tok/s "
              f"(+{s['startup_seconds']:.1f}s engine start-up)", flush=True)
        tok, sec = bare_vllm(cfg, parts)
        rates.append(tok / sec)
        print(f"bare LLM.chat (after): {tok} tokens in {sec:.1f}s = {tok / sec:.1f} tok/s", flush=True)
        b_rate = sum(rates) / len(rates)
        out = {"bare_tok_s": round(b_rate, 1), "pipeline_tok_s": round(p_rate, 1), "ratio": round(p_rate / b_rate, 3),
               "bare_spread_pct": round(100 * (max(rates) - min(rates)) / b_rate, 1), "device": a.device}
        print(f"ratio pipeline/bare: {out['ratio']:.3f}x (goal >= 0.95x); bare spread {out['bare_spread_pct']}%")
        if not a.no_embedded:
            tok, sec = embedded(cfg, parts)
            out["embedded_tok_s"] = round(tok / sec, 1)
            out["vllm_over_embedded"] = round(b_rate / (tok / sec), 3)
            print(f"embedded engine: {tok} tokens in {sec:.1f}s = {tok / sec:.1f} tok/s; vllm/embedded {out['vllm_over_embedded']:.2f}x")
        if a.json:
            print(json.dumps(out))


if __name__ == "__main__":
    main()
