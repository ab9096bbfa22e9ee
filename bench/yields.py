"""Yield per negative type, edit mode vs rewrite mode, on the same real captions and seeds.

    python bench/yields.py [--captions 40]

Yield = units with a valid negative (strict parse + structural type check + word-class check) / units. The ratio
edit/rewrite per type is what chose the default mode (see docs/yields.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.generation import captions_file  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.inputs import read_captions  # noqa: E402
from pipeline.kinds import negatives as task  # noqa: E402
from pipeline.kinds.negatives.schema import NegType  # noqa: E402
from pipeline.records import Provenance, RawResult, Rejection  # noqa: E402
from pipeline.text.word_class import CHECKED, parse_captions  # noqa: E402


def yields(engine, inp: Path, mode: str) -> tuple[dict[str, float], Counter]:
    cfg = load_config(None, {"input": {"path": inp}, "negatives": {"mode": mode, "paraphrase": False}})
    captions, _ = read_captions(cfg.input)
    tpls = task.templates_for(cfg)
    units = task.plan_units(captions, cfg, tpls)
    docs = parse_captions([c.caption for c in captions])
    kept, total, reasons = Counter(), Counter(), Counter()
    for t in task.task_names(cfg):
        mine = [u for u in units if u.task == t]
        outs = engine.generate([task.render(u, tpls[t], mode, cfg) for u in mine])
        for u, c in zip(mine, outs):
            prov = Provenance(
                "embedded", "m", u.prompt_sha, mode, 0.7, 0.95, 40, u.seed, c.tokens_in, c.tokens_out, 0.0
            )
            raw = RawResult(u.key, u.source.id, u.source.caption, None, t, c.texts, c.finish_reasons, prov, "bench")
            res = task.parse_unit(raw, tpls[t], docs[u.source.caption] if t in CHECKED else None)
            total[t] += 1
            if isinstance(res, Rejection):
                reasons[(t, res.reason)] += 1
            else:
                kept[t] += 1
    return {t: kept[t] / total[t] for t in total}, reasons


def top_reasons(reasons: Counter, task_name: str) -> str:
    mine = [(reason, n) for (t, reason), n in reasons.most_common() if t == task_name]
    return ", ".join(f"{reason} {n}" for reason, n in mine[:3])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--captions", type=int, default=40)
    args = ap.parse_args()
    from pipeline.engines.embedded import EmbeddedEngine

    with tempfile.TemporaryDirectory() as tmp:
        inp = captions_file(args.captions, Path(tmp))
        engine = EmbeddedEngine(load_config(None).engine)
        results = {}
        for mode in ("edit", "rewrite"):
            t0 = time.perf_counter()
            results[mode] = yields(engine, inp, mode)
            print(f"{mode}: {time.perf_counter() - t0:.0f}s")
    print(f"\n{'type':<16}{'edit':>8}{'rewrite':>9}{'edit/rewrite':>14}   top edit rejections | top rewrite rejections")
    for t in (n.value for n in NegType):
        e, r = results["edit"][0][t], results["rewrite"][0][t]
        print(
            f"{t:<16}{e:>8.1%}{r:>9.1%}{(e / r if r else float('inf')):>14.2f}   "
            f"{top_reasons(results['edit'][1], t)} | {top_reasons(results['rewrite'][1], t)}"
        )
    e_all = sum(results["edit"][0].values()) / len(NegType)
    r_all = sum(results["rewrite"][0].values()) / len(NegType)
    print(f"{'mean':<16}{e_all:>8.1%}{r_all:>9.1%}{(e_all / r_all if r_all else float('inf')):>14.2f}")


if __name__ == "__main__":
    main()
