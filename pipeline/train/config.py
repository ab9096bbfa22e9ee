"""The one typed training configuration (same precedence as the run config).

defaults < YAML file (``--config train.yaml``) < environment (``CONTRASTGEN_TRAIN_*``, nested with ``__``,
e.g. ``CONTRASTGEN_TRAIN_OPTIM__LR=1e-5``) < command-line flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, field_validator
from pydantic_settings import SettingsConfigDict

from pipeline.settings import (  # noqa: F401 (re-exported)
    BUNDLED_ENCODER_ID,
    Section,
    Settings,
    bundled_encoder,
    resolve,
)
from pipeline.train.losses import NAMES, loss


def _known_loss(name: str) -> str:
    if name not in NAMES:
        raise ValueError(f"unknown loss {name!r}: expected one of {list(NAMES)}")
    return name


# a module of pipeline/train/losses (:data:`pipeline.train.losses.NAMES`), which declares the loss; checked per key,
# so an error names the field (loss.weights.<name>)
LossName = Annotated[str, AfterValidator(_known_loss)]


class DataSection(Section):
    dirs: list[Path] = Field(default_factory=list, description="contrastgen dataset folders to train on (train split).")
    max_negatives: int = Field(8, ge=1, description="Typed negatives per anchor (padded; extra ones are dropped).")
    positives_per_anchor: int = Field(
        2,
        ge=1,
        description="Positives an anchor is paired with each epoch, from its paraphrase and the other captions "
        "of its group (input.group_column), taken in turn so that epochs go through all of them (2: chosen on "
        "4,993 grouped COCO captions, docs/training.md; an anchor with one positive trains once).",
    )
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of train captions held back for early stopping (never the test split)."
    )


class ModelSection(Section):
    base: Path | None = Field(
        None, description="sentence-transformers model folder; default: bundled all-MiniLM-L6-v2."
    )
    out: Path | None = Field(None, description="Output model folder.")
    max_seq_length: int = Field(64, gt=0, description="Tokens per text (captions are short).")

    def resolved_base(self) -> Path:
        return self.base or bundled_encoder()


class OptimSection(Section):
    lr: float = Field(1e-4, gt=0, description="AdamW peak learning rate (chosen by transfer, docs/training.md).")
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Linear warm-up share of all steps, then linear decay.")
    batch_size: int = Field(32, gt=0, description="Anchors per contrastive batch (global, across all ranks).")
    epochs: int = Field(10, gt=0, description="At most this many epochs; early stopping usually ends sooner.")
    grad_cache_chunk: int | None = Field(
        None, gt=0, description="GradCache mini-batch (texts per forward); none: one plain forward per batch."
    )
    seed: int = Field(0)
    max_grad_norm: float = Field(1.0, gt=0)


class LossSection(Section):
    weights: dict[LossName, float] = Field(
        default_factory=lambda: {"view_local": 1.0, "ema_distill": 30.0},
        description="Loss name -> weight; the training loss is the weighted sum. The default was chosen by transfer "
        "to human-written COCO captions and STS-B dev (docs/training.md): view_local at lr 1e-4 gained most there; "
        "in-batch MNRL cost retention.",
    )
    scale: float = Field(20.0, gt=0, description="Inverse temperature of the similarity logits (MNRL's 20).")
    ema_alpha: float = Field(0.9996, gt=0, lt=1, description="Teacher <- alpha*teacher + (1-alpha)*student per step.")

    @field_validator("weights")
    @classmethod
    def _some(cls, v: dict[LossName, float]) -> dict[LossName, float]:
        if not any(w > 0 for w in v.values()):
            raise ValueError("expected at least one loss with a positive weight, e.g. {mnrl: 1.0}")
        if any(w < 0 for w in v.values()):
            raise ValueError("loss weights must be >= 0")
        return v


class EvalSection(Section):
    every_steps: int | None = Field(
        None, gt=0, description="Validate every N steps for early stopping; none: once per epoch."
    )
    patience: int = Field(3, ge=1, description="Stop after this many validations without improvement.")
    max_retention_drop: float = Field(
        1.0,
        ge=0,
        description="A checkpoint whose retention check falls more than this (points) below the base is not kept.",
    )
    batch_size: int = Field(64, gt=0, description="Texts per encode call during evaluation.")
    retention: Path | None = Field(
        None,
        description="STS-format file for the retention check and report (STS Benchmark's TSV, e.g. STS-B dev's "
        "sts-dev.csv, or JSONL of sentence1/sentence2/score): even lines steer checkpoints, odd lines are reported. "
        "Default: the bundled 120 pairs.",
    )


class TrainConfig(Settings):
    """Everything `contrastgen train` needs; saved resolved into the model card and train manifest."""

    model_config = SettingsConfigDict(env_prefix="CONTRASTGEN_TRAIN_")

    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    loss: LossSection = Field(default_factory=LossSection)
    eval: EvalSection = Field(default_factory=EvalSection)

    def uses_teacher(self) -> bool:
        """A loss with a weight needs the EMA teacher (its module says so)."""
        return any(loss(name).needs_teacher for name, w in self.loss.weights.items() if w > 0)


def load_train_config(config_file: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    return resolve(TrainConfig, config_file, overrides)
