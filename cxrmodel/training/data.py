"""What one training run learns from: the training split after balancing, the validation split,
the age scaler fitted on the training split, cached datasets and the positive weights.

Built the same way by the single-process training and by every rank of the data-parallel
entry point (:mod:`flows.train_ddp`), from the frame of labelled studies the database returns
(:func:`db.studies.labelled_frame`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from cxrmodel.config import DataConfig, TrainConfig
from cxrmodel.data.balancing import BalancingResult, apply_balancing, preset_steps
from cxrmodel.data.cache import ImageCache, cached_loader
from cxrmodel.data.datasets import StudyDataset
from cxrmodel.data.metadata import AgeScaler, labels_matrix, patient_features
from cxrmodel.data.transforms import augmentation_transform, eval_transform
from cxrmodel.training.loop import positive_weights


def version_name(kind: str) -> str:
    """A new model version's name: its kind and the UTC time to the microsecond."""
    return f"{kind}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}"


@dataclass
class TrainingData:
    """The datasets of one training run and what was fitted on its training split."""

    train_rows: pd.DataFrame  # the training split after balancing
    val_rows: pd.DataFrame
    n_train_before_balancing: int
    balanced: BalancingResult
    scaler: AgeScaler
    train_dataset: StudyDataset
    val_dataset: StudyDataset
    pos_weight: torch.Tensor


def prepare_training_data(frame: pd.DataFrame, cache_root: Path, data: DataConfig, train: TrainConfig) -> TrainingData:
    """Training and validation datasets from a frame of labelled studies (``split``, patient
    features, ``study_key``, ``image_path``, ``content_hash``, 14 label columns): balancing
    (training split only), the age scaler, loaders through the image cache under
    ``cache_root``, positive weights."""
    train_df = frame[frame["split"] == "train"].reset_index(drop=True)
    val_df = frame[frame["split"] == "val"].reset_index(drop=True)
    if train_df.empty or val_df.empty:
        raise RuntimeError(f"need train and val studies, have {len(train_df)} and {len(val_df)}")
    steps = preset_steps(data.balancing) if data.balancing != "none" else []
    balanced = apply_balancing(train_df, steps, seed=data.balancing_seed)
    train_rows = balanced.frame

    scaler = AgeScaler.fit(train_df["age"])
    cache = ImageCache(cache_root, data.image_size)
    train_dataset = StudyDataset(
        cached_loader(cache, train_rows),
        patient_features(train_rows, scaler),
        labels_matrix(train_rows),
        flips=train_rows["flip"].to_numpy(),
        transform=augmentation_transform(train.augmentation, data.image_size),
    )
    val_dataset = StudyDataset(
        cached_loader(cache, val_df),
        patient_features(val_df, scaler),
        labels_matrix(val_df),
        transform=eval_transform(data.image_size),
    )
    pos_weight = positive_weights(labels_matrix(train_rows), train.pos_weight_overrides, train.pos_weight_max)
    return TrainingData(train_rows, val_df, len(train_df), balanced, scaler, train_dataset, val_dataset, pos_weight)


def training_loaders(prepared: TrainingData, train: TrainConfig, device: torch.device) -> tuple[DataLoader, DataLoader]:
    """(shuffled training loader, validation loader) of one process, with the recipe's workers."""
    options = {
        "num_workers": train.num_workers,
        "pin_memory": device.type == "cuda",  # page-locked batches, copied with non_blocking=True
        **({"prefetch_factor": train.prefetch_factor or 4, "persistent_workers": True} if train.num_workers else {}),
    }
    train_loader = DataLoader(
        prepared.train_dataset,
        batch_size=train.batch_size,
        shuffle=True,
        drop_last=len(prepared.train_rows) > train.batch_size,
        generator=torch.Generator().manual_seed(train.seed),
        **options,
    )
    val_loader = DataLoader(prepared.val_dataset, batch_size=max(train.batch_size, 64), shuffle=False, **options)
    return train_loader, val_loader
