"""The training loop of seed 004: weighted BCE, Adam, ReduceLROnPlateau on validation loss,
best checkpoint by macro-F1 (or mean AUROC), optional early stopping, resumable checkpoints;
and the options of :mod:`cxrmodel.training.recipe` (AdamW, a per-batch cosine schedule with
warm-up, a weight average, other rules for the kept epoch). Validation predicts with the
recipe's test-time augmentation (``tta_hflip``), as evaluation and scoring do.

Framework-free: callers observe progress through ``on_epoch`` (the Prefect task writes each
epoch to the database from there) and ``on_batch`` (its progress bar).

Data-parallel training (:mod:`cxrmodel.training.distributed`, one process per device) goes through the
same :func:`fit`: pass the ``DistributedDataParallel``-wrapped model and a training loader
whose sampler is a ``DistributedSampler``; see :func:`fit` for what changes.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from cxrmodel.config import TrainConfig
from cxrmodel.evaluation.metrics import epoch_summary
from cxrmodel.findings import FINDINGS
from cxrmodel.io import atomic_write
from cxrmodel.models.networks import flip_averaged_probabilities
from cxrmodel.progress import BatchCallback
from cxrmodel.threads import rebalance
from cxrmodel.training.distributed import all_reduce_sum, broadcast_buffers, broadcast_object, is_distributed, unwrap
from cxrmodel.training.recipe import LearningRateSchedule, make_ema, make_optimizer, selection_rule


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    val_loss: float
    mean_precision: float
    mean_recall: float
    macro_f1: float
    mean_auroc: float | None
    learning_rate: float
    seconds: float
    images_per_second: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_metric: float
    history: list[EpochResult] = field(default_factory=list)
    stopped_early: bool = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def positive_weights(
    labels: np.ndarray, overrides: dict[str, float] | None = None, max_weight: float | None = None
) -> torch.Tensor:
    """Per-class ``pos_weight`` = negatives / positives in the training labels ``[N, 14]``,
    clipped to ``max_weight``; classes without positives get 1; ``overrides`` (by finding
    name, e.g. the seed's Pneumonia 4.5) win."""
    labels = np.asarray(labels)
    pos = labels.sum(axis=0).astype(float)
    neg = len(labels) - pos
    weights = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    if max_weight is not None:
        weights = np.minimum(weights, max_weight)
    for name, value in (overrides or {}).items():
        weights[FINDINGS.index(name)] = value
    return torch.tensor(weights, dtype=torch.float32)


@dataclass(frozen=True)
class Acceleration:
    """How the training loop uses the device: autocast dtype, memory format, loss scaling."""

    autocast_dtype: torch.dtype | None
    memory_format: torch.memory_format
    scale_loss: bool

    @classmethod
    def for_device(cls, config: TrainConfig, device: torch.device) -> Acceleration:
        cuda = device.type == "cuda"
        dtype = None
        if config.amp == "bf16" or (config.amp == "auto" and cuda and torch.cuda.is_bf16_supported()):
            dtype = torch.bfloat16
        elif config.amp == "fp16":
            dtype = torch.float16
        channels_last = config.channels_last if config.channels_last is not None else cuda
        return cls(dtype, torch.channels_last if channels_last else torch.contiguous_format, dtype == torch.float16 and cuda)

    def autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)


PLAIN = Acceleration(None, torch.contiguous_format, False)


def _forward(model: nn.Module, batch, device: torch.device, accel: Acceleration = PLAIN):
    rebalance()  # this process's share of the host's cores, when it joined one (cxrmodel.threads)
    image, patient, labels, _ = batch
    image = image.to(device, non_blocking=True, memory_format=accel.memory_format)
    patient = patient.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    with accel.autocast(device):
        logits = model(image, patient)
    return logits.float(), labels


@torch.no_grad()
def predict_loader(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    criterion: nn.Module | None = None,
    tta_hflip: bool = False,
):
    """Sigmoid probabilities ``[N, 14]``, labels ``[N, 14]`` and mean loss over a loader. With
    ``tta_hflip`` each probability is the mean of the image's and its mirror's (the loss stays
    that of the image as given)."""
    model.eval()
    probs, labels, total, count = [], [], 0.0, 0
    for batch in loader:
        logits, y = _forward(model, batch, device)
        if criterion is not None:
            total += float(criterion(logits, y)) * len(y)
            count += len(y)
        if tta_hflip:
            image, patient = batch[0].to(device), batch[1].to(device)
            probs.append(flip_averaged_probabilities(model, image, patient, logits).cpu())
        else:
            probs.append(torch.sigmoid(logits.float()).cpu())
        labels.append(y.cpu())
    p = torch.cat(probs).numpy() if probs else np.zeros((0, len(FINDINGS)), np.float32)
    t = torch.cat(labels).numpy() if labels else np.zeros((0, len(FINDINGS)), np.float32)
    return p, t, (total / count if count else float("nan"))


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    config: TrainConfig,
    pos_weight: torch.Tensor,
    device: torch.device,
    on_epoch: Callable[[EpochResult], None] | None = None,
    checkpoint_path: str | Path | None = None,
    resume: bool = False,
    on_batch: BatchCallback | None = None,
) -> FitResult:
    """Train ``model`` for ``config.epochs`` epochs and return the state of the epoch
    ``config.checkpoint_selection`` keeps (with ``config.ema_decay``, of the weight average).
    With ``checkpoint_path`` a full checkpoint (model, optimiser, scheduler, weight average,
    epoch, history, RNG state) is written after every epoch; ``resume=True`` continues from it.
    Early stopping counts epochs without a better selection score, so it never stops a
    ``last`` run.
    ``on_batch(epoch, batches_done, batches_per_epoch)`` follows the training batches (a
    progress bar); ``on_epoch`` gets each epoch's result.

    Data-parallel training: call this on every rank with the DDP-wrapped ``model``. A
    ``DistributedSampler`` behind ``train_loader`` gets ``set_epoch(epoch)`` each epoch; the
    returned states and checkpoints hold the unwrapped module's state dict (no ``module.``
    prefix). When a process group with several ranks exists, each epoch ends by summing the
    training loss and image counts over the ranks (``train_loss`` and ``images_per_second``
    are global) and copying rank 0's BatchNorm buffers to every rank; rank 0 alone then
    evaluates the whole ``val_loader`` and broadcasts its predictions, so every rank reports
    the same metrics and takes the same scheduler, selection and early-stopping decisions.
    Pass ``checkpoint_path`` (and ``on_epoch`` callbacks that write anything) on rank 0 only.
    """
    accel = Acceleration.for_device(config, device)
    model.to(device, memory_format=accel.memory_format)
    core = unwrap(model)  # the plain module: state dicts, checkpoints and validation
    step_model = torch.compile(model) if config.compile else model
    scaler = torch.amp.GradScaler(device.type, enabled=accel.scale_loss)
    criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight.to(device))
    optimizer = make_optimizer(model.parameters(), config)
    scheduler = LearningRateSchedule(optimizer, config, len(train_loader))
    ema = make_ema(core, config)
    validated = ema.module if ema is not None else core  # the weights validated and kept
    score_of, value_of = selection_rule(config)
    start_epoch, history = 1, []
    best_score, best_metric, best_epoch, best_state = -float("inf"), -float("inf"), 0, None
    if resume and checkpoint_path is not None and Path(checkpoint_path).is_file():
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        core.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        start_epoch = ckpt["epoch"] + 1
        history = [EpochResult(**h) for h in ckpt["history"]]
        best_metric, best_epoch, best_state = ckpt["best_metric"], ckpt["best_epoch"], ckpt["best_state"]
        best_score = score_of(history[best_epoch - 1]) if best_epoch else -float("inf")
        torch.set_rng_state(ckpt["torch_rng"])
        np.random.set_state(ckpt["numpy_rng"])
        random.setstate(ckpt["python_rng"])

    stale = start_epoch - 1 - best_epoch if history else 0  # epochs since the best one (kept across resume)
    for epoch in range(start_epoch, config.epochs + 1):
        started = time.perf_counter()
        if isinstance(getattr(train_loader, "sampler", None), DistributedSampler):
            train_loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        model.train()
        running, seen = 0.0, 0
        n_batches = len(train_loader)
        for batch_index, batch in enumerate(train_loader, 1):
            logits, y = _forward(step_model, batch, device, accel)
            loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.after_batch()
            if ema is not None:
                ema.update_parameters(core)
            running += float(loss.detach()) * len(y)
            seen += len(y)
            if on_batch is not None:
                on_batch(epoch, batch_index, n_batches)
        train_seconds = time.perf_counter() - started
        if core is not model and is_distributed():  # DDP: see the docstring
            running, seen = all_reduce_sum([running, seen], device)
            seen = int(seen)
            broadcast_buffers(core)
            validation = (
                predict_loader(validated, val_loader, device, criterion, config.tta_hflip) if dist.get_rank() == 0 else None
            )
            probs, labels, val_loss = broadcast_object(validation)
        else:
            probs, labels, val_loss = predict_loader(validated, val_loader, device, criterion, config.tta_hflip)
        scheduler.after_epoch(val_loss)
        summary = epoch_summary(labels.astype(int), probs)
        result = EpochResult(
            epoch=epoch,
            train_loss=running / max(seen, 1),
            val_loss=val_loss,
            mean_precision=summary["mean_precision"],
            mean_recall=summary["mean_recall"],
            macro_f1=summary["macro_f1"],
            mean_auroc=summary["mean_auroc"],
            learning_rate=optimizer.param_groups[0]["lr"],
            seconds=time.perf_counter() - started,
            images_per_second=seen / train_seconds if train_seconds > 0 else 0.0,
        )
        history.append(result)
        score = score_of(result)
        if score > best_score:
            best_score, best_metric, best_epoch, stale = score, value_of(result), epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in validated.state_dict().items()}
        else:
            stale += 1
        if checkpoint_path is not None:
            _save_checkpoint(
                checkpoint_path, core, optimizer, scheduler, ema, epoch, history, best_metric, best_epoch, best_state
            )
        if on_epoch is not None:
            on_epoch(result)
        if config.early_stopping_patience is not None and stale >= config.early_stopping_patience:
            return FitResult(best_state, best_epoch, best_metric, history, stopped_early=True)
    return FitResult(best_state, best_epoch, best_metric, history)


def _save_checkpoint(path, model, optimizer, scheduler, ema, epoch, history, best_metric, best_epoch, best_state) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "epoch": epoch,
        "history": [h.as_dict() for h in history],
        "best_metric": best_metric,
        "best_epoch": best_epoch,
        "best_state": best_state,
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state(),
        "python_rng": random.getstate(),
    }
    atomic_write(path, lambda fh: torch.save(state, fh))
