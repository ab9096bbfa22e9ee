"""Run by tests/train/test_distributed.py under torchrun (2 CPU processes, gloo).

Each rank takes its half of GROUPS, runs one Trainer.step (gathered in-batch negatives, averaged
gradients) and rank 0 saves loss and gradients for comparison with one process on all of GROUPS.
"""

import sys
from pathlib import Path

import torch

from pipeline.train import distributed as ddp
from pipeline.train.run import load_encoder
from pipeline.train.trainer import Trainer
from tests.train.test_encode import GROUPS4, parity_config


def main(model_dir: str, out: str, chunk: str) -> None:
    rank, world = ddp.init_from_env("cpu")
    assert world == 2, world
    model = load_encoder(Path(model_dir), "cpu").eval()  # eval: dropout masks differ between layouts
    trainer = Trainer(parity_config(int(chunk) or None), model, rank)
    half = len(GROUPS4) // world
    loss, _ = trainer.step(GROUPS4[rank * half : (rank + 1) * half])
    total = ddp.all_mean(loss)
    if rank == 0:
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        torch.save({"loss": total, "grads": grads}, out)
    ddp.finish()  # leaving without it can abort at exit ("terminate called without an active exception")


if __name__ == "__main__":
    main(*sys.argv[1:])
