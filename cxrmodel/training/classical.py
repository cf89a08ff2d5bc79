"""Training the classical baseline (per-finding logistic regression on downsampled pixels plus
patient features) on the training split, read through the same image cache as the networks,
and saving it with the config its model version records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrmodel.config import ClassicalConfig, DataConfig
from cxrmodel.data.cache import ImageCache, cached_loader
from cxrmodel.data.metadata import AgeScaler, labels_matrix, patient_features
from cxrmodel.models.classical import PixelLogisticModel
from cxrmodel.models.kinds import ModelKind
from cxrmodel.training.baselines import FittedBaseline
from cxrmodel.training.data import version_name

ARTIFACT_FILE = "pixel_logistic.npz"


def cached_images(frame: pd.DataFrame, cache_root: Path, image_size: int) -> np.ndarray:
    """uint8 ``[N, S, S]`` of the rows of ``frame`` from the image cache at ``image_size``."""
    load = cached_loader(ImageCache(cache_root, image_size), frame)
    if frame.empty:
        return np.zeros((0, image_size, image_size), dtype=np.uint8)
    return np.stack([load(i) for i in range(len(frame))])


def fit_pixel_logistic(
    train_rows: pd.DataFrame, cache_root: Path, image_size: int, config: ClassicalConfig
) -> tuple[PixelLogisticModel, AgeScaler]:
    """The model fitted on ``train_rows`` (no balancing: each regression weighs its classes) and
    the age scaler fitted on their ages."""
    if train_rows.empty:
        raise RuntimeError("no labelled studies to train the classical baseline on")
    scaler = AgeScaler.fit(train_rows["age"])
    model = PixelLogisticModel.fit(
        cached_images(train_rows, cache_root, image_size),
        patient_features(train_rows, scaler),
        labels_matrix(train_rows),
        side=config.side,
        c=config.c,
        max_iter=config.max_iter,
    )
    return model, scaler


def predict_pixel_logistic(
    model: PixelLogisticModel, scaler: AgeScaler, rows: pd.DataFrame, cache_root: Path, image_size: int
) -> np.ndarray:
    return model.predict_proba(cached_images(rows, cache_root, image_size), patient_features(rows, scaler))


def fit_classical_baseline(
    frame: pd.DataFrame, cache_root: Path, data: DataConfig, config: ClassicalConfig, models_dir: Path
) -> FittedBaseline:
    """Fit on the training split of ``frame``, save ``<models_dir>/<name>/pixel_logistic.npz``."""
    train_rows = frame[frame["split"] == "train"].reset_index(drop=True)
    model, scaler = fit_pixel_logistic(train_rows, cache_root, data.image_size, config)
    name = version_name(ModelKind.PIXEL_LOGISTIC)
    path = Path(models_dir) / name / ARTIFACT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    run_config = {
        "image_size": data.image_size,
        "age_scaler": scaler.to_dict(),
        "classical": config.model_dump(mode="json"),
        "data": data.model_dump(mode="json"),
        "n_train": len(train_rows),
        "findings_without_model": int(np.isfinite(model.constant).sum()),
    }
    return FittedBaseline(ModelKind.PIXEL_LOGISTIC, name, path, model.save(path), run_config, model.parameter_count)
