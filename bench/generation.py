"""Generation throughput: the whole pipeline vs the bare embedded engine on the same prompts.

    python bench/generation.py [--kind negatives|rationales|pairs] [--captions 24] [--questions 12] [--sentences 24]
    [--sweep]

Prints tok/s of the bare engine (in-process, same requests, same chunking) and of the pipeline
(Prefect flow -> Ray actor -> raw parts -> finalize), and their ratio (goal: >= 0.95x), on the prompts of
the chosen flow: negatives (COCO captions), rationales (SVAMP and GSM8K questions, multi-line answers) or
pairs (SNLI premises: candidates, then the judge on them, both stages).
--sweep also prints the bare engine's tok/s by batch size with and without prefix caching: the
measurement behind choosing transformers + GGUF dequantized, batched, prefix-cached.
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
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import load_config  # noqa: E402
from pipeline.inputs import read_captions  # noqa: E402
from pipeline.kinds import KINDS  # noqa: E402
from pipeline.kinds import negatives as task  # noqa: E402
from pipeline.records import Provenance, RawResult  # noqa: E402
from pipeline.run import generate as steps  # noqa: E402
from pipeline.run.store import RunStore  # noqa: E402


def captions_file(n: int, tmp: Path) -> Path:
    """Real COCO captions from ../shared when present, else the bundled sample."""
    shared = REPO.parent / "shared" / "data" / "coco_captions" / "test.jsonl"
    out = tmp / "captions.jsonl"
    if shared.exists():
        rows = [json.loads(line) for line in shared.open()][:n]
        out.write_text(
            "".join(json.dumps({"id": r["file_name"], "caption": r["captions"]["object"][0]}) + "\n" for r in rows)
        )
    else:
        out.write_text("".join((REPO / "data" / "sample_captions.jsonl").read_text().splitlines(True)[:n]))
    return out


def sentences_file(n: int, tmp: Path) -> Path:
    """Distinct SNLI dev premises from ../shared when present, else the bundled captions as sentences."""
    snli = REPO.parent / "shared" / "data" / "snli" / "dev.jsonl"
    out = tmp / "sentences.jsonl"
    if snli.exists():
        seen: list[str] = []
        for line in snli.open():
            if json.loads(line)["premise"] not in seen:
                seen.append(json.loads(line)["premise"])
            if len(seen) == n:
                break
    else:
        seen = [json.loads(line)["caption"] for line in (REPO / "data" / "sample_captions.jsonl").open()][:n]
    out.write_text("".join(json.dumps({"sentence": x}) + "\n" for x in seen))
    return out


def questions_file(n: int, tmp: Path) -> Path:
    """Real SVAMP and GSM8K (train) questions from ../shared when present, else the bundled sample."""
    shared = REPO.parent / "shared" / "data"
    out = tmp / "questions.jsonl"
    if (shared / "svamp" / "SVAMP.json").exists():
        svamp = json.loads((shared / "svamp" / "SVAMP.json").read_text())[: n // 2]
        rows = [{"id": r["ID"], "question": f"{r['Body']} {r['Question']}", "answer": r["Answer"]} for r in svamp]
        rows += [json.loads(line) for line in (shared / "gsm8k" / "train.jsonl").open().readlines()[: n - len(rows)]]
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        out.write_text("".join((REPO / "data" / "questions.jsonl").read_text().splitlines(True)[:n]))
    return out


def bare(kind_name: str, cfg, engine) -> tuple[int, float]:
    """The kind's stages in-process on the bare engine, in the pipeline's own parts (same units, same chunks,
    same rendering; a later stage planned from the earlier stage's answers, held in memory)."""
    kind = KINDS[kind_name]
    store = RunStore(cfg.output.dir.parent / "no-store")  # never entered: nothing is read or written
    ctx = steps.start(kind, cfg)
    done: dict[str, list[RawResult]] = {}
    ctx.raws = lambda name: sorted(done[name], key=lambda r: r.unit_key)
    t0, tokens = time.perf_counter(), 0
    for name in kind.stages(cfg):
        done[name] = []
        for chunk in steps.plan_stage(kind, ctx, store, name).pending:
            for u, c in zip(chunk, engine.generate([kind.render(u, ctx) for u in chunk])):
                tokens += c.tokens_out
                prov = Provenance("embedded", "m", u.prompt_sha, kind.mode(u, cfg), 0, 0, 0, u.seed, 0, 0, 0)
                done[name].append(
                    RawResult(u.key, u.source.id, u.source.text, None, u.task, c.texts, c.finish_reasons, prov, "")
                )
    return tokens, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=sorted(KINDS), default="negatives")
    ap.add_argument("--captions", type=int, default=24)
    ap.add_argument("--questions", type=int, default=12)
    ap.add_argument("--sentences", type=int, default=24)
    ap.add_argument("--sweep", action="store_true")
    args = ap.parse_args()
    from pipeline.engines.embedded import EmbeddedEngine

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inp = {
            "negatives": lambda: captions_file(args.captions, tmp),
            "rationales": lambda: questions_file(args.questions, tmp),
            "pairs": lambda: sentences_file(args.sentences, tmp),
        }[args.kind]()
        # One engine actor with all cores, like the bare engine in this process: the ratio is the pipeline's own
        # overhead. (The default layout, one single-threaded actor per core, is measured by bench/engines.py.)
        cfg = load_config(None, {"input": {"path": inp}, "output": {"dir": tmp / "out"}, "ray": {"workers": 1}})
        engine = EmbeddedEngine(cfg.engine)
        engine.warmup()  # the pipeline's actors warm up too, as part of their start-up
        rates = []

        def measure_bare(label: str) -> None:
            tok, sec = bare(args.kind, cfg, engine)
            rates.append(tok / sec)
            print(f"bare engine ({label}): {tok} tokens in {sec:.1f}s = {tok / sec:.1f} tok/s")

        import ray

        from flows.generate import generate_flow
        from pipeline.engines.pool import ensure_ray

        # Baseline measured before and after the pipeline run, so drift on a shared machine shows up.
        measure_bare("before")
        ensure_ray(cfg.ray)
        t0 = time.perf_counter()
        s = generate_flow(args.kind, cfg.model_dump(mode="json"))
        wall = time.perf_counter() - t0
        ray.shutdown()
        measure_bare("after")
        b_rate = sum(rates) / len(rates)
        p_rate = s["tokens_out"] / s["generation_seconds"]
        p_cold = s["tokens_out"] / (s["generation_seconds"] + s["startup_seconds"])
        print(
            f"pipeline    : {s['tokens_out']} tokens in {s['generation_seconds']:.1f}s of generation = {p_rate:.1f} "
            f"tok/s "
            f"(+{s['startup_seconds']:.1f}s engine start-up: Ray worker, imports, model load, warm-up); whole flow "
            f"{wall:.1f}s"
        )
        print(f"bare baseline: mean {b_rate:.1f} tok/s, spread {100 * (max(rates) - min(rates)) / b_rate:.1f}%")
        print(f"ratio pipeline/bare, generation  : {p_rate / b_rate:.3f}x (goal >= 0.95x) on {args.kind} prompts")
        print(f"ratio pipeline/bare, incl. start : {p_cold / b_rate:.3f}x (start-up is paid once per run)")

        if args.sweep and args.kind == "negatives":
            sweep(cfg)


def sweep(cfg) -> None:
    from pipeline.engines.embedded import EmbeddedEngine

    one = load_config(
        None, {"input": cfg.input.model_dump(), "negatives": {"types": ["swap_obj"], "paraphrase": False}}
    )
    captions, _ = read_captions(one.input)
    tpls = task.templates_for(one)
    reqs = [task.render(u, tpls["swap_obj"], "edit", one) for u in task.plan_units((captions * 3)[:64], one, tpls)]
    engine = EmbeddedEngine(one.engine)

    def rate(fn, sub) -> float:
        t0 = time.perf_counter()
        tokens = fn(sub)
        return tokens / (time.perf_counter() - t0)

    def uncached(sub) -> int:  # batch 1, whole prompt prefilled every time: the naive baseline
        return sum(engine._run([r], [si], "", [engine.prompt_text(r)])[0][1] for r in sub for si in range(r.sampling.n))

    base = rate(uncached, reqs[:8])
    print(f"\nengine sweep (bare engine, swap_obj prompts, n=2): batch 1, no prefix cache: {base:.1f} tok/s (1.00x)")
    for bs in (1, 8, 32, 64):
        engine.cfg = engine.cfg.model_copy(update={"batch_size": bs})
        sub = reqs[:8] if bs == 1 else reqs
        r = rate(lambda rs: sum(c.tokens_out for c in engine.generate(rs)), sub)
        print(f"  batch {bs:>3}, prefix cache on: {r:6.1f} tok/s ({r / base:.2f}x)")
    try:
        import llama_cpp  # noqa: F401

        print("  llama-cpp-python is installed: serve it and compare through the openai engine (issue 6)")
    except ImportError:
        print("  llama-cpp-python: not installed (a ~6 min source build here); reported 69 tok/s single stream")


if __name__ == "__main__":
    main()
