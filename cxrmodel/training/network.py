"""Training one network from prepared data: the model built from the recipe, its loaders, the
checkpoint (resumed when the recipe names one), the fit."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from cxrmodel.config import TrainConfig
from cxrmodel.device import resolve_device
from cxrmodel.models.networks import build_model
from cxrmodel.progress import BatchCallback
from cxrmodel.training.data import TrainingData, training_loaders
from cxrmodel.training.loop import EpochResult, FitResult, fit


def train_network(
    prepared: TrainingData,
    out: Path,
    train: TrainConfig,
    on_epoch: Callable[[EpochResult], None] | None = None,
    device: torch.device | None = None,
    on_batch: BatchCallback | None = None,
) -> tuple[torch.nn.Module, FitResult]:
    """Build ``train.architecture`` and fit it on ``prepared`` in this process, checkpointing
    to ``out/checkpoint.pt`` after every epoch (copied from ``train.resume_checkpoint`` first
    when set, and resumed); ``on_batch`` follows the training batches. Returns the plain module (its last state) and the fit's result."""
    device = device or resolve_device(train.device)
    train_loader, val_loader = training_loaders(prepared, train, device)
    model = build_model(train.architecture, **train.model_kwargs())
    checkpoint = Path(out) / "checkpoint.pt"
    if train.resume_checkpoint is not None:
        if not Path(train.resume_checkpoint).is_file():
            raise FileNotFoundError(f"resume checkpoint not found: {train.resume_checkpoint}")
        shutil.copyfile(train.resume_checkpoint, checkpoint)
    result = fit(
        model,
        train_loader,
        val_loader,
        train,
        prepared.pos_weight,
        device,
        on_epoch=on_epoch,
        checkpoint_path=checkpoint,
        resume=train.resume_checkpoint is not None,
        on_batch=on_batch,
    )
    return model, result


def resumed_history(checkpoint: str | Path) -> tuple[int, list[dict]]:
    """The last epoch a checkpoint holds and the metrics of every epoch up to it (what a run
    resumed from it records before its own epochs)."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return int(ckpt["epoch"]), [dict(h) for h in ckpt["history"]]
