"""The training loop: batches of anchor groups -> weighted losses -> AdamW, with an EMA teacher,
optional GradCache, multi-process gradient averaging, and early stopping on a held-out check.

A stop (SIGINT, SIGTERM: :mod:`pipeline.stop`) is honoured between steps, never inside one: the loop ends, the best
checkpoint so far is loaded as at the normal end, and :attr:`TrainResult.stopped` names the signal.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import cast

import torch
from sentence_transformers import SentenceTransformer
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import get_linear_schedule_with_warmup

from pipeline import stop
from pipeline.errors import ConfigError, DatasetError
from pipeline.progress import Meter
from pipeline.train import distributed as ddp
from pipeline.train.batch import Embedded, layout, split_embeddings
from pipeline.train.config import TrainConfig
from pipeline.train.data import Group, batches, pair_positives
from pipeline.train.encode import cached_step, embed_frozen, plain_step
from pipeline.train.evaluate import retention, retention_pairs, typed_scores
from pipeline.train.losses import combined

log = logging.getLogger("contrastgen.train")


@dataclass(frozen=True)
class Validation:
    step: int
    val_acc: float
    val_margin: float
    retention_check: float
    eligible: bool

    @property
    def score(self) -> tuple[float, float]:
        """Accuracy first; the mean margin breaks ties (a small validation set often ties on accuracy)."""
        return self.val_acc, self.val_margin


@dataclass
class TrainResult:
    steps_per_epoch: int = 0
    planned_steps: int = 0  # all epochs' steps, as planned before the first
    steps: int = 0
    examples: int = 0
    seconds: float = 0.0  # in training steps (validation excluded)
    best_step: int = 0
    stopped_early: bool = False
    stopped: str | None = None  # the signal ("SIGINT", "SIGTERM") that stopped training between steps, if one did
    validations: list[Validation] = field(default_factory=list)
    losses: list[dict] = field(default_factory=list)

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds if self.seconds else 0.0


def groups_rows(groups: list[Group]) -> list[dict]:
    """Groups back as rows of the training layout (for scoring the validation groups like a test split)."""
    return [
        {"anchor": g.anchor, "positive": g.positive, "negative": n, "type": t}
        for g in groups
        for n, t in zip(g.negatives, g.types)
    ]


class Trainer:
    """Trains ``student`` in place; ``run`` returns the log and leaves the best checkpoint loaded."""

    def __init__(self, cfg: TrainConfig, student: SentenceTransformer, rank: int = 0):
        self.cfg, self.student, self.rank = cfg, student, rank
        self.loss_fn = combined(cfg.loss.weights)
        self.teacher = None
        self._best: dict[str, torch.Tensor] = {}
        if cfg.uses_teacher():
            self.teacher = AveragedModel(
                student, multi_avg_fn=get_ema_multi_avg_fn(cfg.loss.ema_alpha), use_buffers=True
            )
            self.teacher.module.eval().requires_grad_(False)

    def _loss_of_flat(self, lay, teacher_anchor, teacher_positive):
        b, scale = lay.neg_index.shape[0], self.cfg.loss.scale
        mask = lay.neg_index >= 0  # [B, K]

        def loss_of_flat(flat: torch.Tensor):
            anchor, positive, negatives = split_embeddings(flat, lay)
            e = Embedded(
                anchor=anchor,
                positive=positive,
                negatives=negatives,
                neg_mask=mask,
                neg_weight=lay.neg_weight,
                all_positive=ddp.gather(positive),
                all_negatives=ddp.gather(negatives),
                all_neg_mask=ddp.gather_nograd(mask.float()) > 0.5,
                all_neg_weight=ddp.gather_nograd(lay.neg_weight),
                offset=self.rank * b,
                scale=scale,
                teacher_anchor=teacher_anchor,
                teacher_positive=teacher_positive,
            )
            return self.loss_fn(e)

        return loss_of_flat

    def step(self, groups: list[Group]) -> tuple[float, dict[str, float]]:
        """Forward, backward and gradient averaging for one batch (the optimizer step is the caller's)."""
        cfg = self.cfg
        lay = layout(groups, cfg.data.max_negatives)
        t_a = t_p = None
        if self.teacher is not None:
            t = embed_frozen(
                cast(SentenceTransformer, self.teacher.module),
                [g.anchor for g in groups] + [g.positive for g in groups],
                cfg.optim.grad_cache_chunk or cfg.eval.batch_size,
            )
            t_a, t_p = t[: len(groups)], t[len(groups) :]
        loss_of_flat = self._loss_of_flat(lay, t_a, t_p)
        if cfg.optim.grad_cache_chunk:
            loss, terms = cached_step(self.student, lay.texts, loss_of_flat, cfg.optim.grad_cache_chunk)
        else:
            loss, terms = plain_step(self.student, lay.texts, loss_of_flat)
        ddp.average_gradients(self.student.parameters())
        return float(loss), terms

    def validate(self, step: int, val: list[Group], base_check: float | None) -> Validation:
        self.student.eval()
        with torch.no_grad():
            overall = typed_scores(self.student, groups_rows(val), self.cfg.eval.batch_size)[
                0
            ]  # no retention report here
            check = retention(
                self.student, retention_pairs("check", self.cfg.eval.retention), self.cfg.eval.batch_size
            ).spearman
        self.student.train()
        eligible = base_check is None or check >= base_check - self.cfg.eval.max_retention_drop
        return Validation(step, overall.acc, overall.margin, check, eligible)

    def _plan(self, train: list[Group]) -> list[list[list[Group]]]:
        o, world = self.cfg.optim, ddp.world_size()
        if o.batch_size % world:
            raise ConfigError(f"optim.batch_size: expected a multiple of the {world} ranks, got {o.batch_size}")
        per = self.cfg.data.positives_per_anchor
        made: dict = {}  # pair_positives' memo across epochs
        plan = [
            batches(pair_positives(train, per, o.seed, ep, made), o.batch_size, o.seed, ep, drop_last=world > 1)
            for ep in range(o.epochs)
        ]
        if not any(plan):
            raise DatasetError(
                f"training: expected at least one batch of {o.batch_size} anchors, got {len(train)} anchors "
                "with a positive. Fix: a smaller --batch-size or more captions"
            )
        return plan

    def _update(self, opt, sched) -> None:
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.cfg.optim.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if self.teacher is not None:
            self.teacher.update_parameters(self.student)

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.student.state_dict().items()}

    def _check(self, res: TrainResult, val: list[Group]) -> bool:
        """Validate, keep the checkpoint if it is the best eligible one; True when patience ran out."""
        base = res.validations[0]
        v = self.validate(res.steps, val, base.retention_check)
        res.validations.append(v)
        log.info(
            "step %d: val_acc %.2f retention_check %.2f%s",
            v.step,
            v.val_acc,
            v.retention_check,
            "" if v.eligible else " (retention dropped: not kept)",
        )
        best = max((x.score for x in res.validations[:-1] if x.eligible), default=(float("-inf"),) * 2)
        if v.eligible and v.score > best:
            self._best, res.best_step = self._snapshot(), v.step
        return res.steps - res.best_step >= self.cfg.eval.patience * self._every(res)

    def _every(self, res: TrainResult) -> int:
        return self.cfg.eval.every_steps or max(1, res.steps_per_epoch)

    def run(self, train: list[Group], val: list[Group]) -> TrainResult:
        """Train; with validation groups, keep the best eligible checkpoint (step 0, the base, counts). Asked to stop,
        it ends between steps with that checkpoint loaded and ``stopped`` set."""
        o = self.cfg.optim
        # dropout draws from here: a run is the same whatever ran before it in the process (as `run_train` seeds it)
        torch.manual_seed(o.seed + self.rank)
        per_rank = o.batch_size // ddp.world_size()
        plan = self._plan(train)
        total = sum(len(p) for p in plan)
        opt = torch.optim.AdamW(self.student.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        sched = get_linear_schedule_with_warmup(opt, int(o.warmup_ratio * total), total)
        res = TrainResult(steps_per_epoch=len(plan[0]), planned_steps=total)
        if val:
            res.validations.append(self.validate(0, val, None))
            self._best = self._snapshot()
        self.student.train()
        meter = Meter("train", total, "steps", silent=self.rank != 0)
        for epoch, epoch_batches in enumerate(plan):
            for i, batch in enumerate(epoch_batches):
                signum = ddp.agreed_stop(stop.asked())  # between steps only: a step is never cut in half
                if signum is not None:
                    res.stopped = stop.signal_name(signum)
                    break
                start = time.perf_counter()  # examples/s counts training steps only, not validation
                loss, terms = self.step(batch[self.rank * per_rank : (self.rank + 1) * per_rank])
                self._update(opt, sched)
                res.steps, res.examples = res.steps + 1, res.examples + len(batch)
                res.seconds += time.perf_counter() - start
                entry = {
                    "step": res.steps,
                    "epoch": epoch,
                    "loss": round(ddp.all_mean(loss), 5),
                    **terms,
                    "lr": sched.get_last_lr()[0],
                    "examples_per_s": round(res.examples_per_s, 2),
                }
                res.losses.append(entry)
                meter.advance(
                    1,
                    epoch=f"{epoch + 1}/{o.epochs}",
                    loss=f"{entry['loss']:.4f}",
                    lr=f"{entry['lr']:.2e}",
                    anchors_per_s=f"{entry['examples_per_s']:.1f}",
                )
                due = (
                    res.steps % self.cfg.eval.every_steps == 0
                    if self.cfg.eval.every_steps
                    else i == len(epoch_batches) - 1
                )
                if val and due:
                    patience_out = self._check(res, val)
                    meter.advance(val_acc=f"{res.validations[-1].val_acc:.1f}", kept_step=res.best_step)
                    if patience_out:
                        res.stopped_early = True
                        break
            if res.stopped:
                break
            log.info(
                "epoch %d: %d steps, loss %.4f, lr %.2e, %.1f anchors/s",
                epoch,
                res.steps,
                entry["loss"],
                entry["lr"],
                res.examples_per_s,
            )
            if res.stopped_early:
                break
        if res.stopped:
            meter.quiet()  # the stop's one line says how far it got
        else:
            meter.close()
        if val:
            self.student.load_state_dict(self._best)
        else:
            res.best_step = res.steps
        self.student.eval()
        return res
