"""Issue 32's lever "positives that reorder the words and keep the meaning": does a caption with its trailing
prepositional phrase fronted ("A dog runs on the beach." -> "On the beach, a dog runs.") teach PAWS-style word order
when it is an anchor's positive? Measured once (docs/results/training.md); not a default: it did not move PAWS.

    python bench/front_positives.py --data DIR --variants VARIANTS.yaml --out OUT.json

VARIANTS.yaml maps a name to train config overrides plus ``front: first`` (the fronted caption is the anchor's
first positive, before its paraphrase and its human views) or ``front: extra`` (it is the last), or no ``front``
(the dataset as it is: the baseline beside it). Every model trains one epoch unless the overrides say otherwise,
and is judged as ``bench/transfer.py`` judges (COCO transfer set, STS-B dev, PAWS dev). Training is deterministic on
CPU: a variant without ``front`` reproduces ``bench/transfer.py``'s numbers for the same config.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"

FRONTABLE = frozenset(
    "on in at near by under beside behind across along through during inside outside above below over next around "
    "against beneath atop alongside underneath between among into onto down up".split()
)


def front_pp(doc: Any) -> str | None:
    """The caption (a spaCy doc) with its last prepositional phrase moved to the front, where that phrase hangs on a
    verb and ends the caption ("A man walks along the path." -> "Along the path, a man walks."); else None. A phrase
    on a noun is left alone: "a cup of coffee" cannot lose "of coffee"."""
    toks = list(doc)
    end = len(toks)
    while end and toks[end - 1].is_punct:
        end -= 1
    for t in toks if end >= 4 else ():
        if t.dep_ != "prep" or t.lower_ not in FRONTABLE or t.head.pos_ not in ("VERB", "AUX"):
            continue
        sub = list(t.subtree)
        start, stop = sub[0].i, sub[-1].i + 1
        if stop != end or start < 2 or not any(x.pos_ in ("NOUN", "PROPN") for x in sub):
            continue
        first = toks[0]
        rest = doc[0:start].text.rstrip(" ,")
        if first.pos_ != "PROPN":
            rest = rest[:1].lower() + rest[1:]
        pp = doc[start:stop].text
        return f"{pp[:1].upper()}{pp[1:]}, {rest}{doc[end:].text if end < len(toks) else ''}"
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--variants", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()

    from bench.outside.paws import paraphrase_auc, read_paws
    from bench.outside.rules import coco_transfer_set, read_coco
    from bench.outside.transfer import evaluate_transfer
    from pipeline.config import deep_merge, read_yaml
    from pipeline.text.word_class import load_parser
    from pipeline.train.config import load_train_config
    from pipeline.train.data import read_split
    from pipeline.train.evaluate import read_sts, retention
    from pipeline.train.run import _device, load_data, load_encoder
    from pipeline.train.trainer import Trainer

    coco = SHARED / "coco_captions" / "test.jsonl"
    used = {c for s in ("train", "test") for c in read_split(a.data, s)["anchor"].to_pylist()}
    rows = coco_transfer_set(coco, 500, frozenset(n for n, caps in read_coco(coco) if used & set(caps)))
    sts, paws = read_sts(SHARED / "stsb" / "sts-dev.csv"), read_paws(SHARED / "paws" / "dev.tsv")
    nlp, out = load_parser(), {}

    def fronted(groups, mode):
        by_anchor = {g.anchor: front_pp(d) for g, d in zip(groups, nlp.pipe(g.anchor for g in groups))}
        res = []
        for g in groups:
            f, pos = by_anchor[g.anchor], tuple(g.positives or (g.positive,))
            if f and mode == "first":
                res.append(replace(g, positive=f, positives=(f, *pos)))
            elif f and mode == "extra":
                res.append(replace(g, positives=(*pos, f)))
            else:
                res.append(g)
        return res, sum(1 for f in by_anchor.values() if f)

    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in read_yaml(a.variants).items():
            overrides = dict(overrides)
            mode = overrides.pop("front", None)
            base = {"data": {"dirs": [str(a.data)]}, "model": {"out": str(Path(tmp) / "m")}, "optim": {"epochs": 1}}
            cfg = load_train_config(None, deep_merge(base, overrides))
            d = load_data(cfg)
            train, val = d.train, d.val
            if mode:
                (train, n), (val, _) = fronted(train, mode), fronted(val, mode)
                print(f"{name}: {n} of {len(train)} training anchors have a fronted positive", flush=True)
            student = load_encoder(cfg.model.resolved_base(), _device(), cfg.model.max_seq_length)
            t = time.perf_counter()
            res = Trainer(cfg, student).run(train, val)
            tr = evaluate_transfer(student, rows, cfg.eval.batch_size)
            out[name] = {
                "transfer": {k: v.acc_positive for k, v in tr.items()},
                "stsb_dev": retention(student, sts, cfg.eval.batch_size).spearman,
                "paws_dev": paraphrase_auc(student, paws, cfg.eval.batch_size),
                "steps": res.steps,
                "kept_step": res.best_step,
                "train_s": round(time.perf_counter() - t),
            }
            print(name, json.dumps(out[name]), flush=True)
            a.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
