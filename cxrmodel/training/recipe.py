"""The parts of a training recipe the loop delegates: the optimiser, the learning-rate schedule,
the weight average, and the rule that picks the kept epoch.

* Optimiser: Adam (seed 004; ``weight_decay`` is an L2 term in the gradient) or AdamW
  (decoupled weight decay).
* Schedule: ``plateau`` (seed 004: ReduceLROnPlateau on validation loss, once per epoch) or
  ``cosine`` (per batch: a linear warm-up from 1 % of the rate over ``warmup_epochs``, then a
  cosine decay to zero at the last batch; ``LinearLR`` then ``CosineAnnealingLR`` in a
  ``SequentialLR``).
* Weight average: with ``ema_decay`` an exponential moving average of the weights and the
  BatchNorm buffers (``AveragedModel`` with ``get_ema_multi_avg_fn``), updated after every
  optimiser step; the averaged weights are the ones validated, kept and saved.
* Kept epoch (``checkpoint_selection``): ``macro_f1`` or ``val_auroc`` (highest), ``val_loss``
  (lowest) or ``last``. On a validation split of ~100 studies the per-epoch AUROC of a few
  positives per finding moves by +-0.1 from one epoch to the next; the epoch with the highest
  value is then mostly the luckiest, and on the real dev set it was 0.02-0.08 macro AUROC
  below the last epoch on the cross-validation. ``last`` (after a cosine decay, with EMA) or
  ``val_loss`` (a smooth figure that every study contributes to) do not chase that noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cxrmodel.config import TrainConfig

#: The cosine schedule's warm-up starts at this fraction of the learning rate.
WARMUP_START_FACTOR = 0.01


def make_optimizer(parameters: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.Adam(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)


class LearningRateSchedule:
    """``after_batch()`` after every optimiser step and ``after_epoch(val_loss)`` after every
    validation; only the one the recipe's schedule uses moves the rate."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig, batches_per_epoch: int) -> None:
        self.per_batch = config.schedule == "cosine"
        if not self.per_batch:
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=config.scheduler_factor, patience=config.scheduler_patience
            )
            return
        total = max(1, config.epochs * batches_per_epoch)
        warmup = min(config.warmup_epochs * batches_per_epoch, total - 1)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup)
        if warmup == 0:
            self.scheduler = cosine
            return
        linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=WARMUP_START_FACTOR, total_iters=warmup)
        self.scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])

    def after_batch(self) -> None:
        if self.per_batch:
            self.scheduler.step()

    def after_epoch(self, val_loss: float) -> None:
        if not self.per_batch:
            self.scheduler.step(val_loss)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


def make_ema(model: nn.Module, config: TrainConfig) -> AveragedModel | None:
    """The weight average of ``model`` (a copy, on the same device), or ``None`` without ``ema_decay``."""
    if config.ema_decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)


def _finite(value: float | None, default: float) -> float:
    return default if value is None or not math.isfinite(value) else float(value)


#: Per rule: (score to maximise, the value recorded as the kept epoch's metric) of an epoch's result.
SELECTION_RULES: dict[str, tuple[Callable, Callable]] = {
    "macro_f1": (lambda r: r.macro_f1, lambda r: r.macro_f1),
    "val_auroc": (lambda r: _finite(r.mean_auroc, 0.0), lambda r: _finite(r.mean_auroc, 0.0)),
    "val_loss": (lambda r: -_finite(r.val_loss, math.inf), lambda r: r.val_loss),
    # every epoch beats the one before; the recorded value is that epoch's validation mean AUROC
    "last": (lambda r: float(r.epoch), lambda r: _finite(r.mean_auroc, 0.0)),
}


def selection_rule(config: TrainConfig) -> tuple[Callable, Callable]:
    return SELECTION_RULES[config.checkpoint_selection]
