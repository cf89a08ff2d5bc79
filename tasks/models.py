"""Loading registered model versions for inference, whatever their kind."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from cxrmodel.artifacts import load_state_dict
from cxrmodel.baselines import KnnEmbeddingModel
from cxrmodel.cache import ImageCache
from cxrmodel.data import StudyDataset
from cxrmodel.metadata import AgeScaler, patient_features
from cxrmodel.model import build_model
from cxrmodel.train import predict_loader, resolve_device
from cxrmodel.transforms import eval_transform
from db.models import ModelVersion
from tasks.common import cached_loader

NETWORK_KINDS = ("densenet121_fpn", "densenet121")


@dataclass
class LoadedModel:
    """A model version ready to predict: the network, and for embedding baselines the fitted head."""

    version_id: int
    kind: str
    network: torch.nn.Module
    image_size: int
    age_scaler: AgeScaler
    knn: KnnEmbeddingModel | None = None

    def predict_frame(self, frame: pd.DataFrame, cache_root: Path, batch_size: int = 64, device: str = "auto") -> np.ndarray:
        """Probabilities ``[N, 14]`` for labelled studies read through the image cache."""
        dev = resolve_device(device)
        dataset = StudyDataset(
            cached_loader(ImageCache(cache_root, self.image_size), frame),
            patient_features(frame, self.age_scaler),
            transform=eval_transform(self.image_size),
        )
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        if self.knn is None:
            probs, _, _ = predict_loader(self.network.to(dev), loader, dev)
            return probs
        return self.knn.predict_proba(embed_loader(self.network, loader, dev))


@torch.no_grad()
def embed_loader(network: torch.nn.Module, loader: DataLoader, device: torch.device) -> np.ndarray:
    network.eval().to(device)
    chunks = [network.embed(batch[0].to(device)).float().cpu() for batch in loader]
    return torch.cat(chunks).numpy()


def load_model_version(version: ModelVersion, parent: ModelVersion | None = None) -> LoadedModel:
    """Build the network of ``version`` (or of its ``parent`` for embedding baselines) and load
    weights after checking their sha256 against the registry."""
    config = version.config
    if version.kind in NETWORK_KINDS:
        network = build_model(version.kind)
        network.load_state_dict(load_state_dict(version.artifact_path, version.sha256))
        return LoadedModel(version.id, version.kind, network.eval(), config["image_size"], AgeScaler.from_dict(config["age_scaler"]))
    if parent is None:
        raise ValueError(f"model version {version.name} ({version.kind}) needs its parent network")
    base = load_model_version(parent)
    knn = KnnEmbeddingModel.load(version.artifact_path, version.sha256)
    return LoadedModel(version.id, version.kind, base.network, base.image_size, base.age_scaler, knn=knn)
