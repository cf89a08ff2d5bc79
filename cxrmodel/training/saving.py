"""What a finished training run leaves in its folder, and the config its model version keeps.

``model.safetensors`` (the best epoch's weights; its sha256 goes to the registry),
``optimizer.pt`` (from ``checkpoint.pt``), ``config.json`` and ``validation_metrics.csv``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from cxrmodel.config import DataConfig, TrainConfig
from cxrmodel.findings import FINDINGS
from cxrmodel.models.artifacts import save_state_dict
from cxrmodel.models.networks import count_parameters
from cxrmodel.training.data import TrainingData
from cxrmodel.training.loop import FitResult


@dataclass(frozen=True)
class SavedModel:
    """A trained model's artefact, its sha256, the config to register and its size."""

    artifact_path: Path
    sha256: str
    config: dict
    parameter_count: int


def model_config(
    result: FitResult, prepared: TrainingData, data: DataConfig, train: TrainConfig, extra: dict | None = None
) -> dict:
    """What a network's model version records: recipe, input size, age scaler, label counts, best epoch."""
    return {
        "architecture": train.architecture,
        "image_size": data.image_size,
        "age_scaler": prepared.scaler.to_dict(),
        "findings": list(FINDINGS),
        "train": train.model_dump(mode="json"),
        "data": data.model_dump(mode="json"),
        "pos_weight": [float(w) for w in prepared.pos_weight],
        "label_counts_before_balancing": prepared.balanced.counts_before,
        "label_counts_after_balancing": prepared.balanced.counts_after,
        "best_epoch": result.best_epoch,
        **(extra or {}),
    }


def save_trained_model(
    out: Path,
    name: str,
    model: torch.nn.Module,
    result: FitResult,
    prepared: TrainingData,
    data: DataConfig,
    train: TrainConfig,
    history_rows: list[dict],
    extra_config: dict | None = None,
) -> SavedModel:
    """Load the best state into ``model`` (the plain module) and write the run's artefacts into ``out``."""
    model.load_state_dict(result.best_state)
    config = model_config(result, prepared, data, train, extra_config)
    artifact = out / "model.safetensors"
    sha = save_state_dict(model.state_dict(), artifact, metadata={"name": name, "architecture": str(train.architecture)})
    checkpoint = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    torch.save(checkpoint["optimizer"], out / "optimizer.pt")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    with open(out / "validation_metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history_rows[0]))
        writer.writeheader()
        writer.writerows(history_rows)
    return SavedModel(artifact, sha, config, count_parameters(model))
