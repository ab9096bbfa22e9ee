"""Trainer speed against sentence-transformers' own trainer, and GradCache memory at batch 32 vs 1024.

    python bench/trainer.py [--data DIR] [--steps 8] [--batch-size 32]

1. Throughput: the same model (bundled all-MiniLM-L6-v2), the same (anchor, positive, negative)
   triplets, batch size and number of steps, MultipleNegativesRankingLoss in both; examples/s of the
   training loop only (model load and data set-up excluded), both measured in this run. Goal >= 1.0x.
2. Memory: peak RSS of one training step with GradCache (chunk 32) at batch 32 and at batch 1024, each in
   a fresh subprocess; goal <= 1.2x. The uncached step at batch 256 is
   printed too, to show what GradCache saves. Anchors beyond the dataset's are its captions with a
   numbered suffix: memory depends on lengths, not content. The peak is the step's own: the kernel's
   high-water mark (VmHWM) is reset after the model and data are loaded (``/proc/self/clear_refs``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.train.config import TrainConfig, bundled_encoder  # noqa: E402
from pipeline.train.data import Group, groups_from_table, read_split  # noqa: E402


def repeated_groups(data: Path, n: int, max_negatives: int) -> list[Group]:
    """n anchor groups of the train split; beyond the data's own, its groups again with a numbered suffix."""
    groups, _ = groups_from_table(read_split(data, "train"), max_negatives=max_negatives)
    out = []
    for i in range(n):
        g = groups[i % len(groups)]
        tag = "" if i < len(groups) else f" ({i // len(groups)})"
        out.append(Group(g.anchor + tag, g.positive + tag, tuple(x + tag for x in g.negatives), g.types, g.weights))
    return out


def ours(groups: list[Group], batch: int, steps: int) -> float:
    from pipeline.train.run import load_encoder
    from pipeline.train.trainer import Trainer

    cfg = TrainConfig(
        optim={"batch_size": batch, "epochs": 1, "warmup_ratio": 0.0},
        data={"max_negatives": 1},
        loss={"weights": {"mnrl": 1.0}},
    )
    model = load_encoder(bundled_encoder(), "cpu", cfg.model.max_seq_length)
    t0 = time.perf_counter()  # the whole run() call, as trainer.train() is timed for sentence-transformers
    res = Trainer(cfg, model).run(groups[: batch * steps], [])
    return res.examples / (time.perf_counter() - t0)


def sentence_transformers_trainer(groups: list[Group], batch: int, steps: int, out: Path) -> float:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    model = SentenceTransformer(str(bundled_encoder()), device="cpu")
    model.max_seq_length = TrainConfig().model.max_seq_length
    ds = Dataset.from_dict(
        {
            "anchor": [g.anchor for g in groups[: batch * steps]],
            "positive": [g.positive for g in groups[: batch * steps]],
            "negative": [g.negatives[0] for g in groups[: batch * steps]],
        }
    )
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=2e-5,
        warmup_ratio=0.0,
        logging_steps=steps,
        save_strategy="no",
        report_to="none",
        seed=0,
        dataloader_drop_last=False,
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=ds, loss=MultipleNegativesRankingLoss(model, scale=20.0)
    )
    t0 = time.perf_counter()
    trainer.train()
    return batch * steps / (time.perf_counter() - t0)


def one_step_peak(data: Path, batch: int, chunk: int | None) -> float:
    """Run in a subprocess: one training step, print peak RSS in MiB."""
    from pipeline.train.run import load_encoder
    from pipeline.train.trainer import Trainer

    cfg = TrainConfig(optim={"batch_size": batch, "grad_cache_chunk": chunk}, loss={"weights": {"mnrl": 1.0}})
    model = load_encoder(bundled_encoder(), "cpu", cfg.model.max_seq_length).train()
    big = repeated_groups(data, batch, max_negatives=8)
    trainer = Trainer(cfg, model)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    trainer.step(big)
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def peak_in_subprocess(data: Path, batch: int, chunk: int | None) -> float:
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); from bench.trainer import one_step_peak; "
        f"from pathlib import Path; print(one_step_peak(Path({str(data)!r}), {batch}, {chunk}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=REPO / "demo_out", help="a contrastgen dataset (default: make demo's)")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--skip-memory", action="store_true")
    a = ap.parse_args()
    groups = repeated_groups(a.data, a.batch_size * a.steps, max_negatives=1)
    with tempfile.TemporaryDirectory() as tmp:
        st_rate = sentence_transformers_trainer(groups, a.batch_size, a.steps, Path(tmp))
    our_rate = ours(groups, a.batch_size, a.steps)
    st_rate2 = None
    with tempfile.TemporaryDirectory() as tmp:  # baseline again: drift on a shared machine shows up
        st_rate2 = sentence_transformers_trainer(groups, a.batch_size, a.steps, Path(tmp))
    base = (st_rate + st_rate2) / 2
    print(f"sentence-transformers trainer (MNRL): {st_rate:.1f} / {st_rate2:.1f} examples/s (before / after)")
    print(f"contrastgen trainer (mnrl)         : {our_rate:.1f} examples/s")
    print(f"ratio ours / sentence-transformers : {our_rate / base:.3f}x (goal >= 1.0x)")
    result = {"st_examples_per_s": [st_rate, st_rate2], "ours_examples_per_s": our_rate, "ratio": our_rate / base}
    if not a.skip_memory:
        m32 = peak_in_subprocess(a.data, 32, 32)
        m1024 = peak_in_subprocess(a.data, 1024, 32)
        plain256 = peak_in_subprocess(a.data, 256, None)
        print(
            f"peak RSS, GradCache chunk 32: batch 32 {m32:.0f} MiB, batch 1024 {m1024:.0f} MiB -> "
            f"{m1024 / m32:.3f}x (goal <= 1.2x)"
        )
        print(f"peak RSS, no GradCache, batch 256: {plain256:.0f} MiB ({plain256 / m32:.2f}x batch 32 cached)")
        result.update(rss_mib={"cached_32": m32, "cached_1024": m1024, "plain_256": plain256}, memory_ratio=m1024 / m32)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
