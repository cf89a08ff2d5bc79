"""Loading registered model versions for inference, whatever their kind."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from cxrmodel.models.artifacts import load_state_dict
from cxrmodel.models.embedding import KnnEmbeddingModel, MlpEmbeddingModel
from cxrmodel.data.cache import ImageCache
from cxrmodel.data.datasets import StudyDataset
from cxrmodel.data.metadata import AgeScaler, patient_features
from cxrmodel.models.networks import build_model
from cxrmodel.training.loop import predict_loader, resolve_device
from cxrmodel.data.transforms import eval_transform
from db.models import ModelVersion
from tasks.common import cached_loader

NETWORK_KINDS = ("densenet121_fpn", "densenet121")


class EmbeddingHead(Protocol):
    """A classifier fitted on a parent network's image embeddings."""

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray: ...


#: Embedding-baseline kinds and how each loads its artefact ``(path, expected_sha256)``.
EMBEDDING_HEADS = {
    "knn_embedding": KnnEmbeddingModel.load,
    "mlp_embedding": MlpEmbeddingModel.load,
}


@dataclass
class LoadedModel:
    """A model version ready to predict: the network, and for embedding baselines the fitted
    head (k-NN, MLP) that turns the network's embeddings into probabilities."""

    version_id: int
    kind: str
    network: torch.nn.Module
    image_size: int
    age_scaler: AgeScaler
    embedding_head: EmbeddingHead | None = None

    @property
    def knn(self) -> EmbeddingHead | None:
        """Old name of :attr:`embedding_head` (any embedding head, not only k-NN)."""
        return self.embedding_head

    def _frame_loader(self, frame: pd.DataFrame, cache_root: Path, batch_size: int) -> DataLoader:
        dataset = StudyDataset(
            cached_loader(ImageCache(cache_root, self.image_size), frame),
            patient_features(frame, self.age_scaler),
            transform=eval_transform(self.image_size),
        )
        return DataLoader(dataset, batch_size=batch_size, shuffle=False)

    def embed_frame(self, frame: pd.DataFrame, cache_root: Path, batch_size: int = 64, device: str = "auto") -> np.ndarray:
        """The network's image embeddings ``[N, d]`` for labelled studies read through the image cache."""
        return embed_loader(self.network, self._frame_loader(frame, cache_root, batch_size), resolve_device(device))

    def predict_frame(self, frame: pd.DataFrame, cache_root: Path, batch_size: int = 64, device: str = "auto") -> np.ndarray:
        """Probabilities ``[N, 14]`` for labelled studies read through the image cache."""
        if self.embedding_head is not None:
            return self.embedding_head.predict_proba(self.embed_frame(frame, cache_root, batch_size, device))
        dev = resolve_device(device)
        probs, _, _ = predict_loader(self.network.to(dev), self._frame_loader(frame, cache_root, batch_size), dev)
        return probs


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
    if version.kind not in EMBEDDING_HEADS:
        raise ValueError(f"model version {version.name} has unknown kind {version.kind!r}")
    if parent is None:
        raise ValueError(f"model version {version.name} ({version.kind}) needs its parent network")
    base = load_model_version(parent)
    head = EMBEDDING_HEADS[version.kind](version.artifact_path, version.sha256)
    return LoadedModel(version.id, version.kind, base.network, base.image_size, base.age_scaler, embedding_head=head)
