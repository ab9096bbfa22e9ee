"""Stopping `contrastgen train` is an operation, not a crash (issue 33): SIGINT or SIGTERM ends it between steps
within seconds, with one line and exit 130 / 143; the best checkpoint so far is saved, with a card that says the run
was stopped; a stop before the first step saves nothing; the same command then trains again from the start."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline import stop
from pipeline.train.config import load_train_config
from pipeline.train.run import run_train
from tests.train.conftest import row, write_dataset

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "contrastgen")
NOUNS = ["dog", "cat", "horse", "bird", "child", "woman", "man", "boat", "bus", "train", "kite", "cake"]
PLACES = ["on a sofa", "in a field", "by a lake", "under a tree", "near a house", "on a street"]
# One torch thread: a tiny model's steps are many times cheaper so on a busy machine (threads spin waiting for a core)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
EPOCHS = (
    15  # the tests signal once the first epoch is done: 14 are left (about 170 steps), so it is still training then
)


def _rows(n: int, offset: int = 0) -> list[dict]:
    rows = []
    for i in range(offset, offset + n):
        noun, place, other = NOUNS[i % len(NOUNS)], PLACES[i % len(PLACES)], NOUNS[(i + 5) % len(NOUNS)]
        caption = f"a {noun} {place} number {i}"
        positive = f"number {i}: a {noun} that is {place}"
        rows.append(row(caption, positive, f"a {other} {place} number {i}", "replace_obj", str(i), weight=1.0))
        rows.append(
            row(
                caption,
                positive,
                f"a {noun} {PLACES[(i + 1) % len(PLACES)]} number {i}",
                "replace_rel",
                str(i),
                weight=1.0,
            )
        )
    return rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """24 captions to train on (a few held back for validation), 4 to test on: a run of many short steps."""
    return write_dataset(tmp_path_factory.mktemp("stop") / "ds", {"train": _rows(24), "test": _rows(4, offset=100)})


def _train_argv(dataset: Path, tiny_model: Path, root: Path, epochs: int) -> tuple[list[str], Path]:
    config = root / "train.yaml"  # no early stopping: the run is still training when the test stops it
    config.write_text("eval:\n  patience: 100000\n")
    out = root / "m"
    return [
        CLI,
        "train",
        str(dataset),
        "--out",
        str(out),
        "--base",
        str(tiny_model),
        "--loss",
        "mnrl",
        "--batch-size",
        "2",
        "--epochs",
        str(epochs),
        "--config",
        str(config),
    ], out


class _Stderr:
    """The lines a child writes on stderr, read as they come (a thread), so a test can wait for one."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, proc: subprocess.Popen, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(re.search(pattern, x) for x in self.lines):
            assert proc.poll() is None, f"exited {proc.returncode} before {pattern!r}:\n{''.join(self.lines)[-3000:]}"
            assert time.monotonic() < deadline, f"no {pattern!r} in {timeout} s:\n{''.join(self.lines)[-3000:]}"
            time.sleep(0.05)

    def text(self) -> str:
        """All of it (once the child has ended)."""
        self._thread.join(timeout=10)
        return "".join(self.lines)


def _stop_line(stderr: str, name: str, out: Path) -> tuple[int, int, int]:
    """The one line (the last on stderr, the only one of ours): step, of how many, kept step."""
    assert "Traceback" not in stderr, stderr[-3000:]
    ours = [x for x in stderr.splitlines() if x.startswith("contrastgen:")]
    assert len(ours) == 1 and ours[0] == stderr.strip().splitlines()[-1], stderr[-3000:]
    m = re.fullmatch(
        rf"contrastgen: train stopped by {name} at step (\d+) of (\d+); kept the checkpoint of step (\d+) "
        rf"in {re.escape(str(out))}; run the same command again to train from the start",
        ours[0],
    )
    assert m, ours[0]
    step, total, kept = map(int, m.groups())
    assert 1 <= step < total and 0 <= kept <= step
    return step, total, kept


def _stopped_model(out: Path, name: str, step: int, total: int, kept: int) -> None:
    """The model loads, and its card and record say the run was stopped, where, and which checkpoint it is."""
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(out), device="cpu").encode(["a dog on a sofa"]).shape == (1, 32)
    card = (out / "README.md").read_text()
    assert f"**Stopped by {name} at step {step} of {total}**, not a finished run" in card, card
    assert f"kept the checkpoint of step {kept}" in card and "Not evaluated after training" in card
    record = json.loads((out / "contrastgen_train.json").read_text())
    assert (
        record["train"]["stopped"],
        record["train"]["steps"],
        record["train"]["planned_steps"],
        record["train"]["best_step"],
    ) == (name, step, total, kept)
    assert record["after"] == {} and record["before"]


def test_sigint_stops_between_steps_keeps_a_model_and_the_same_command_trains_again(dataset, tiny_model, tmp_path):
    argv, out = _train_argv(dataset, tiny_model, tmp_path, epochs=EPOCHS)
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=ENV
    )
    try:
        err = _Stderr(proc)
        err.wait_for(r"contrastgen\.train: epoch 0: ", proc, timeout=300)  # a whole epoch is done: it is training
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does: the whole foreground process group
        sent = time.monotonic()
        rc = proc.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert rc == 130 and took < 30, err.text()[-3000:]
    assert proc.stdout.read() == ""  # no summary of a run that did not finish
    step, total, kept = _stop_line(err.text(), "SIGINT", out)
    _stopped_model(out, "SIGINT", step, total, kept)

    res = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=ENV)  # the same command, to the end
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    record = json.loads((out / "contrastgen_train.json").read_text())
    assert record["train"]["stopped"] is None and record["train"]["steps"] == total and record["after"]
    assert "Stopped by" not in (out / "README.md").read_text()


def test_sigterm_to_the_command_stops_it_the_same_way(dataset, tiny_model, tmp_path):
    """A scheduler signals the command's process alone (SIGTERM); the supervisor forwards it to the run."""
    argv, out = _train_argv(dataset, tiny_model, tmp_path, epochs=EPOCHS)
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=ENV
    )
    try:
        err = _Stderr(proc)
        err.wait_for(r"contrastgen\.train: epoch 0: ", proc, timeout=300)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert rc == 143, err.text()[-3000:]
    _stopped_model(out, "SIGTERM", *_stop_line(err.text(), "SIGTERM", out))


@pytest.fixture
def asked_to_stop():
    """This process was asked to stop (a real SIGTERM to itself, under pipeline.stop's handlers); forgotten after."""
    with stop.handling():
        os.kill(os.getpid(), signal.SIGTERM)
    assert stop.asked() == signal.SIGTERM
    yield
    stop.reset()


def test_a_stop_before_the_first_step_ends_at_once_and_saves_nothing(dataset, tiny_model, tmp_path, asked_to_stop):
    cfg = load_train_config(None, {"data": {"dirs": [dataset]}, "model": {"out": tmp_path / "m", "base": tiny_model}})
    with pytest.raises(stop.Stopped) as exc:
        run_train(cfg)
    assert exc.value.exit_code == 143 and str(exc.value) == (
        "train stopped by SIGTERM before its first step; no model was saved; run the same command again to train from "
        "the start"
    )
    assert not (tmp_path / "m").exists()


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as ENV does for the commands
    yield
    torch.set_num_threads(before)


def test_a_stop_during_training_keeps_the_best_checkpoint(dataset, tiny_model, tmp_path, monkeypatch, one_thread):
    """In process: asked to stop as step 5 runs, the run ends before step 6, with the best checkpoint by the
    validations until then (every 2 steps) saved and recorded."""
    checks = []

    def asked() -> int | None:  # the trainer asks before each step: the sixth time, the stop has come
        checks.append(1)
        return signal.SIGINT if len(checks) >= 6 else None

    monkeypatch.setattr(stop, "asked", asked)
    out = tmp_path / "m"
    cfg = load_train_config(
        None,
        {
            "data": {"dirs": [dataset]},
            "model": {"out": out, "base": tiny_model},
            "optim": {"batch_size": 2, "epochs": 3},
            "eval": {"every_steps": 2},
        },
    )
    with pytest.raises(stop.Stopped) as exc:
        run_train(cfg)
    record = json.loads((out / "contrastgen_train.json").read_text())
    train = record["train"]
    assert len(checks) == 6 and train["steps"] == 5 and train["stopped"] == "SIGINT"
    assert [v["step"] for v in train["validations"]] == [0, 2, 4]
    assert train["best_step"] in (0, 2, 4) and train["planned_steps"] == 3 * train["steps_per_epoch"]
    assert exc.value.exit_code == 130 and str(exc.value) == (
        f"train stopped by SIGINT at step 5 of {train['planned_steps']}; kept the checkpoint of step "
        f"{train['best_step']} "
        f"in {out}; run the same command again to train from the start"
    )
    _stopped_model(out, "SIGINT", 5, train["planned_steps"], train["best_step"])
