"""Does the data transfer? The encoder before training, trained on rule-based negatives, and trained on DIR,
scored on data the generator never touched.

    python bench/transfer.py --data DIR [--coco FILE] [--stsb FILE] [--paws FILE] [--images 500] [--json]
                             [--config TRAIN_YAML] [--variants YAML] [--no-rules]

- transfer: COCO images whose captions are not in DIR; anchor and positive are two human captions of one image,
  negatives are rule-made from a dependency parse (bench.outside.rules; swap/replace of objects, attributes,
  relations). Accuracy in percent: the positive (the other human caption, standing in for the image) is closer
  to the anchor than to the anchor's perturbation (SugarCrepe's choice, text only).
- stsb_dev: Spearman x 100 of cosine against the human score on STS-B dev (all 1,500 pairs).
- paws_dev: ROC-AUC x 100 of cosine as a paraphrase score on PAWS-Wiki dev (all 8,000 pairs; word-scrambled
  paraphrases against scrambles that change the meaning; bench.outside.paws). Evaluation only.
- rules: the same trainer, config and anchors/positives as DIR's train split, with NegCLIP-style rule negatives
  of each anchor instead of DIR's (the baseline LLM-made negatives must beat). Its validation groups get rule
  negatives too. The rule negatives for training are made with a different seed and a vocabulary from the
  training anchors, not from the transfer set's captions.

Every model is trained with the train config of `contrastgen train DIR` (defaults, or --config's file), in this
process, one after the other. ``--variants YAML`` (a mapping: name -> train config overrides, e.g.
``k4: {data: {positives_per_anchor: 4}}``) also trains DIR with each variant, on the same anchors and in the
same run as the baseline, so a lever is judged against a baseline measured beside it. With --json the last line
is {"base": R, "rules": R, "contrastgen": R, "contrastgen:NAME": R, ...}, R = {"transfer": {neg_type:
accuracy}, "stsb_dev": spearman_x100, "paws_dev": auc_x100, "train_s": seconds, "steps": n,
"kept_step": n} (base: the first three only).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True, help="a contrastgen negatives dataset folder")
    ap.add_argument("--coco", type=Path, default=SHARED / "coco_captions" / "test.jsonl")
    ap.add_argument("--stsb", type=Path, default=SHARED / "stsb" / "sts-dev.csv")
    ap.add_argument("--paws", type=Path, default=SHARED / "paws" / "dev.tsv")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--config", type=Path, default=None, help="train config YAML for every trained model")
    ap.add_argument("--variants", type=Path, default=None, help="YAML: variant name -> train config overrides")
    ap.add_argument("--no-rules", action="store_true", help="skip the rules baseline (a sweep's later runs)")
    a = ap.parse_args()

    from pipeline.config import deep_merge, read_yaml

    variants = read_yaml(a.variants) if a.variants else {}
    if not all(isinstance(v, dict) for v in variants.values()):
        raise SystemExit(
            f"{a.variants}: expected a mapping of variant name -> train config overrides, e.g. "
            "'k4: {data: {positives_per_anchor: 4}}'"
        )

    from bench.outside.paws import paraphrase_auc, read_paws
    from bench.outside.rules import coco_transfer_set, read_coco
    from bench.outside.transfer import evaluate_transfer, rule_groups
    from pipeline.train.config import load_train_config
    from pipeline.train.data import read_split
    from pipeline.train.evaluate import read_sts, retention
    from pipeline.train.run import _device, load_data, load_encoder
    from pipeline.train.trainer import Trainer

    used = {c for split in ("train", "test") for c in read_split(a.data, split)["anchor"].to_pylist()}
    exclude = frozenset(name for name, caps in read_coco(a.coco) if used & set(caps))
    t0 = time.perf_counter()
    rows = coco_transfer_set(a.coco, a.images, exclude)
    sts, paws = read_sts(a.stsb), read_paws(a.paws)
    print(
        f"transfer set: {len(rows)} rows from {a.images} COCO images ({len(exclude)} excluded: their captions are "
        f"in {a.data}); STS-B dev: {len(sts)} pairs; PAWS dev: {len(paws)} pairs; built in "
        f"{time.perf_counter() - t0:.1f} s"
    )

    with tempfile.TemporaryDirectory() as tmp:

        def config(overrides: dict):
            base = {"data": {"dirs": [str(a.data)]}, "model": {"out": str(Path(tmp) / "model")}}
            return load_train_config(a.config, deep_merge(base, overrides))

        cfg = config({})
        data = load_data(cfg)

        def score(model) -> dict:
            t = evaluate_transfer(model, rows, cfg.eval.batch_size)
            return {
                "transfer": {k: v.acc_positive for k, v in t.items()},
                "rows": {k: v.rows for k, v in t.items()},
                "anchor_direction": {k: v.acc_caption for k, v in t.items()},
                "stsb_dev": retention(model, sts, cfg.eval.batch_size).spearman,
                "paws_dev": paraphrase_auc(model, paws, cfg.eval.batch_size),
            }

        def trained(c, train, val) -> dict:
            student = load_encoder(c.model.resolved_base(), _device(), c.model.max_seq_length)
            t = time.perf_counter()
            res = Trainer(c, student).run(train, val)
            took = time.perf_counter() - t
            print(
                f"  trained {res.steps} steps on {len(train)} anchors in {took:.0f} s (kept step {res.best_step})",
                flush=True,
            )
            return {**score(student), "train_s": round(took, 1), "steps": res.steps, "kept_step": res.best_step}

        out = {"base": score(load_encoder(cfg.model.resolved_base(), _device(), cfg.model.max_seq_length))}
        if not a.no_rules:
            print("rules: NegCLIP-style rule negatives of the same anchors", flush=True)
            out["rules"] = trained(cfg, rule_groups(data.train, seed=1), rule_groups(data.val, seed=1))
        print(f"contrastgen: {a.data}", flush=True)
        out["contrastgen"] = trained(cfg, data.train, data.val)
        for name, overrides in variants.items():
            print(f"contrastgen:{name}: {overrides}", flush=True)
            c = config(overrides)
            d = load_data(c)
            out[f"contrastgen:{name}"] = trained(c, d.train, d.val)

    types, w = list(out["base"]["transfer"]), max(13, *(len(n) + 2 for n in out))
    print(f"\n{'transfer accuracy (%)':<22}{'rows':>6}" + "".join(f"{n:>{w}}" for n in out))
    for t in types:
        print(f"{t:<22}{out['base']['rows'][t]:>6}" + "".join(f"{out[n]['transfer'][t]:>{w}.1f}" for n in out))
    print(f"{'STS-B dev (Spearman)':<28}" + "".join(f"{out[n]['stsb_dev']:>{w}.2f}" for n in out))
    print(f"{'PAWS dev (ROC-AUC)':<28}" + "".join(f"{out[n]['paws_dev']:>{w}.2f}" for n in out))
    print(f"{'(anchor direction, all)':<28}" + "".join(f"{out[n]['anchor_direction']['all']:>{w}.1f}" for n in out))
    if a.json:
        keys = ("transfer", "stsb_dev", "paws_dev", "train_s", "steps", "kept_step")
        print(json.dumps({n: {k: r[k] for k in keys if k in r} for n, r in out.items()}))


if __name__ == "__main__":
    main()
