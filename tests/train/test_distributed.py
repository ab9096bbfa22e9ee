"""The multi-process path: 2 CPU processes (torchrun, gloo) give the same loss and gradients as one
process on the whole batch, because negatives are gathered across ranks and gradients averaged."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pipeline.train.run import load_encoder
from pipeline.train.trainer import Trainer
from tests.conftest import REPO
from tests.train.test_encode import GROUPS4, parity_config


def _torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("chunk", [0, 3])
def test_two_ranks_match_one_process(tiny_model, tmp_path, chunk):
    out = tmp_path / "rank0.pt"
    proc = _torchrun("-m", "tests.train.ddp_worker", str(tiny_model), str(out), str(chunk))
    assert proc.returncode == 0, "\n".join(
        line for line in proc.stderr.splitlines() if "rror" in line or "terminate" in line or "what()" in line
    )[-4000:]
    got = torch.load(out)

    model = load_encoder(tiny_model, "cpu").eval()
    loss, _ = Trainer(parity_config(chunk or None), model).step(GROUPS4)
    assert got["loss"] == pytest.approx(loss, abs=1e-5)
    ref = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert ref.keys() == got["grads"].keys()
    for name, g in ref.items():
        torch.testing.assert_close(got["grads"][name], g, atol=1e-5, rtol=1e-4, msg=name)
