"""`contrastgen train` and `contrastgen evaluate`: load data and encoder, evaluate, train, save, card (a stop: see
:func:`run_train`)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer

from pipeline import stop
from pipeline.errors import ConfigError, DatasetError
from pipeline.kinds import kind_of_format
from pipeline.shards.card import load_manifest
from pipeline.train import distributed as ddp
from pipeline.train.card import write_model_card
from pipeline.train.config import TrainConfig
from pipeline.train.data import Group, groups_from_table, read_split, split_groups
from pipeline.train.evaluate import EvalReport, evaluate_table, read_sts
from pipeline.train.report import stopped_line
from pipeline.train.summary import TrainData, TrainSummary
from pipeline.train.trainer import Trainer


def load_data(cfg: TrainConfig) -> TrainData:
    if not cfg.data.dirs:
        raise ConfigError(
            "data.dirs: expected at least one contrastgen dataset folder, got none. Fix: contrastgen train DIR --out "
            "MODEL_DIR"
        )
    groups: list[Group] = []
    skipped, tests = 0, {}
    for d in cfg.data.dirs:
        table = read_split(Path(d), "train")
        g, s = groups_from_table(table, cfg.data.max_negatives)
        if not g:
            raise DatasetError(f"{d}: expected train rows with a paraphrase positive, found none of {table.num_rows}")
        groups += g
        skipped += s
        tests[str(d)] = read_split(Path(d), "test")
    train, val = split_groups(groups, cfg.data.val_fraction)
    return TrainData(train, val, skipped, tests)


def is_retrieval(d: str | Path) -> bool:
    """A dataset whose kind says so (retrieval: ``kind.scores_retrieval``) is also scored as retrieval on its test
    split."""
    return kind_of_format(load_manifest(Path(d)).get("format"), Path(d) / "manifest.json").scores_retrieval


def load_encoder(path: Path, device: str, max_seq_length: int | None = None) -> SentenceTransformer:
    """A sentence-transformers model folder, or a clear error (a bare transformers folder is not enough)."""
    path = Path(path)
    if not (path / "modules.json").is_file():
        found = "no such folder" if not path.exists() else f"files {sorted(p.name for p in path.iterdir())[:8]}"
        raise ConfigError(
            f"{path}: expected a sentence-transformers model folder (with modules.json), found {found}. "
            "Fix: pass a folder saved by SentenceTransformer.save() or by `contrastgen train`."
        )
    model = SentenceTransformer(str(path), device=device, local_files_only=True)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_train(cfg: TrainConfig) -> TrainSummary:
    """Load the data and the encoder, evaluate, train, evaluate again, save the model with its card.

    Stopping (SIGINT, SIGTERM: :mod:`pipeline.stop`) is an operation, not a crash, and always ends in
    :class:`~pipeline.stop.Stopped` carrying the one line to show. Before the first step, loading and the first
    evaluation end at once and nothing is saved. During training the loop ends between steps, the best checkpoint so
    far is saved with a card that says the run was stopped, and the evaluation after training is skipped.
    """
    if cfg.model.out is None:
        raise ConfigError("model.out: expected an output model folder, got none. Fix: --out MODEL_DIR")
    with stop.handling():  # the CLI's worker has them installed already; a script calling this gets them for the run
        return _run_train(cfg)


def _run_train(cfg: TrainConfig) -> TrainSummary:
    device = _device()
    rank, world = ddp.init_from_env(device)
    if world > 1 and device == "cpu":  # ranks share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(cfg.optim.seed + rank)
    try:
        with stop.armed():  # nothing to keep yet: a stop ends loading and the first evaluation at once
            data = load_data(cfg)
            student = load_encoder(cfg.model.resolved_base(), device, cfg.model.max_seq_length)
            retrieval = {d: is_retrieval(d) for d in data.tests}
            before = (
                {
                    d: evaluate_table(student, t, cfg.eval.batch_size, cfg.eval.retention, retrieval[d])
                    for d, t in data.tests.items()
                }
                if rank == 0
                else {}
            )
    except stop.Stopped as exc:
        raise stop.Stopped(exc.signum, stopped_line(stop.signal_name(exc.signum), None, cfg.model.out)) from None
    result = Trainer(cfg, student, rank).run(data.train, data.val)
    after = {}
    if rank == 0 and not result.stopped:
        try:
            with stop.armed():  # a stop as the last step ended skips this evaluation too: the model is saved as is
                after = {
                    d: evaluate_table(student, t, cfg.eval.batch_size, cfg.eval.retention, retrieval[d])
                    for d, t in data.tests.items()
                }
        except stop.Stopped as exc:
            result.stopped = stop.signal_name(exc.signum)
    summary = TrainSummary(str(cfg.model.out), data, result, before, after)
    if rank == 0 and (result.steps or not result.stopped):  # a stop before the first step leaves no model
        student.save(str(cfg.model.out))
        write_model_card(cfg, summary)
    ddp.finish()
    if result.stopped:
        raise stop.Stopped(signal.Signals[result.stopped], stopped_line(result.stopped, result, cfg.model.out))
    return summary


def run_evaluate(
    model_dir: Path, dataset_dir: Path, batch_size: int = 64, retention_file: Path | None = None
) -> EvalReport:
    table = read_split(Path(dataset_dir), "test")  # a missing or damaged dataset fails before the model loads
    if retention_file is not None:
        read_sts(retention_file)  # so does a bad STS file
    return evaluate_table(
        load_encoder(model_dir, _device()), table, batch_size, retention_file, is_retrieval(dataset_dir)
    )
