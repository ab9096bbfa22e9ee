"""Runs inside the ct2 bench venv (bench/engines.py --with ct2): CTranslate2 on prompts rendered by contrastgen.

    python ct2_runner.py SPEC.json OUT.json

SPEC: {"model", "parts": [[{key, prefix (tokens), suffix (tokens), n, seed, max_tokens, temperature, top_p}]],
"end_ids", "threads"}. One ``generate_batch`` per (part, prefix) with the prefix as ``static_prompt`` (cached),
the n samples as repeated inputs in batches of 32 sorted by length (as the embedded engine), the newline and end-of-turn
ids as end tokens. CTranslate2 has one random
generator per thread (``set_random_seed``), no per-request seed: a row's text depends on its batch.
OUT: tokens, seconds, load_s, rss_mb, ids per key (list per sample), tokens_in.
"""

import itertools
import json
import sys
import time

import ctranslate2

spec = json.load(open(sys.argv[1]))
t0 = time.perf_counter()
gen = ctranslate2.Generator(
    spec["model"], device="cpu", compute_type="int8", intra_threads=spec["threads"], inter_threads=1
)
gen.generate_batch([["<|im_start|>"]], max_length=2)  # warm-up
load = time.perf_counter() - t0
ids, tokens, tokens_in = {}, 0, 0
t0 = time.perf_counter()
for part in spec["parts"]:
    for prefix, rows in itertools.groupby(sorted(part, key=lambda r: r["prefix"]), key=lambda r: r["prefix"]):
        rows = list(rows)
        ctranslate2.set_random_seed(rows[0]["seed"])
        batch = [r["suffix"] for r in rows for _ in range(r["n"])]
        res = gen.generate_batch(
            batch,
            max_batch_size=32,
            static_prompt=prefix or None,
            max_length=max(r["max_tokens"] for r in rows),
            sampling_topk=0,
            sampling_topp=rows[0]["top_p"],
            sampling_temperature=rows[0]["temperature"],
            include_prompt_in_result=False,
            end_token=spec["end_ids"],
            return_end_token=True,
        )
        it = iter(res)
        for r in rows:
            outs = [next(it).sequences_ids[0] for _ in range(r["n"])]
            ids[r["key"]] = outs
            tokens += sum(len(o) for o in outs)
            tokens_in += len(prefix) + len(r["suffix"])
seconds = time.perf_counter() - t0
rss = next(int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
json.dump(
    {"tokens": tokens, "seconds": seconds, "load_s": load, "rss_mb": rss, "ids": ids, "tokens_in": tokens_in},
    open(sys.argv[2], "w"),
)
