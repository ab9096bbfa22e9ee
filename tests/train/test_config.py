"""The training config: one precedence (YAML < env < flags), all problems at once, flags parsed."""

from __future__ import annotations

import pytest

from pipeline.cli import _parser, _train_overrides
from pipeline.errors import ConfigError
from pipeline.train.config import load_train_config


def test_precedence_yaml_then_env_then_flags(tmp_path, monkeypatch):
    f = tmp_path / "train.yaml"
    f.write_text("optim: {lr: 1.0e-5, epochs: 4, batch_size: 16}\nloss: {weights: {mnrl: 1.0}}\n")
    monkeypatch.setenv("CONTRASTGEN_TRAIN_OPTIM__EPOCHS", "5")
    a = _parser().parse_args(
        ["train", "d1", "d2", "--out", "m", "--batch-size", "8", "--loss", "degla_local", "ema_distill=30"]
    )
    cfg = load_train_config(f, _train_overrides(a))
    assert cfg.optim.lr == 1e-5  # YAML
    assert cfg.optim.epochs == 5  # env over YAML
    assert cfg.optim.batch_size == 8  # flag over YAML
    assert {k: w for k, w in cfg.loss.weights.items() if w} == {"degla_local": 1.0, "ema_distill": 30.0}
    assert [str(d) for d in cfg.data.dirs] == ["d1", "d2"] and cfg.uses_teacher()


def test_all_problems_reported_together(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_train_config(None, {"optim": {"lr": -1, "batch_size": 0}, "loss": {"weights": {"mnrl": 0.0}}})
    msg = str(exc.value)
    assert "3 problem(s)" in msg and "optim.lr" in msg and "optim.batch_size" in msg and "at least one loss" in msg


def test_an_unknown_loss_is_named_with_the_known_ones():
    with pytest.raises(ConfigError) as exc:
        load_train_config(None, {"loss": {"weights": {"infonce": 1.0}}})
    assert "loss.weights.infonce" in str(exc.value) and "unknown loss 'infonce'" in str(exc.value)
    assert "view_local" in str(exc.value)
