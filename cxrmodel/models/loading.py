"""Loading a registered model version from its files, whatever its kind, ready to predict.

The caller describes the version with :class:`ModelVersionFiles` (the database layer builds
one from its registry row); every artefact's sha256 is checked before its weights are used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from cxrmodel.data.cache import ImageCache, cached_loader
from cxrmodel.data.datasets import StudyDataset
from cxrmodel.data.imaging import read_grayscale, resize_square
from cxrmodel.data.metadata import AgeScaler, patient_features
from cxrmodel.data.transforms import eval_transform
from cxrmodel.device import resolve_device
from cxrmodel.findings import NUM_FINDINGS
from cxrmodel.models.artifacts import load_state_dict
from cxrmodel.models.classical import PixelLogisticModel
from cxrmodel.models.embedding import KnnEmbeddingModel, MlpEmbeddingModel
from cxrmodel.models.kinds import CLASSICAL_KINDS, NETWORK_KINDS, ModelKind
from cxrmodel.models.networks import build_model, network_probabilities
from cxrmodel.models.version_files import ModelVersionFiles
from cxrmodel.threads import rebalance

__all__ = [
    "EMBEDDING_HEADS",
    "EmbeddingHead",
    "LoadedModel",
    "ModelVersionFiles",
    "embed_image_files",
    "embed_loader",
    "load_model_version",
    "raw_pixels",
]


class EmbeddingHead(Protocol):
    """A classifier fitted on a parent network's image embeddings."""

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray: ...


#: How each embedding-baseline kind loads its artefact ``(path, expected_sha256)``.
EMBEDDING_HEADS = {
    ModelKind.KNN_EMBEDDING: KnnEmbeddingModel.load,
    ModelKind.MLP_EMBEDDING: MlpEmbeddingModel.load,
}


def raw_pixels(image: torch.Tensor) -> torch.Tensor:
    """The classical model's input transform: the uint8 ``[1, S, S]`` image as it is."""
    return image


@dataclass
class LoadedModel:
    """A model version ready to predict, whatever its kind, through one path:
    :attr:`input_transform` turns the uint8 ``[1, S, S]`` image (image cache or decoded file at
    :attr:`image_size`) into the model's input, and :meth:`predict_batch` turns a batch of
    inputs and patient features into probabilities ``[B, 14]``. A network scores itself; an
    embedding baseline is its parent ``network`` plus the fitted ``embedding_head``; a
    classical model (``classical``) has no network. ``tta_hflip`` (from the version's recipe)
    makes a network predict the mean of each image and its mirror, in evaluation and scoring alike."""

    version_id: int
    kind: str
    network: torch.nn.Module | None
    image_size: int
    age_scaler: AgeScaler
    embedding_head: EmbeddingHead | None = None
    classical: PixelLogisticModel | None = None
    tta_hflip: bool = False

    @property
    def input_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return raw_pixels if self.classical is not None else eval_transform(self.image_size)

    def prepare(self, device: torch.device) -> LoadedModel:
        """Move the network (if any) to ``device`` in eval mode; returns self."""
        if self.network is not None:
            self.network.eval().to(device)
        return self

    @torch.no_grad()
    def predict_batch(self, inputs: torch.Tensor, patient: torch.Tensor, device: torch.device) -> np.ndarray:
        """Probabilities ``[B, 14]`` (float32) of a batch of :attr:`input_transform` outputs."""
        return self.predict_with_embeddings(inputs, patient, device, embeddings=False)[0]

    @torch.no_grad()
    def predict_with_embeddings(
        self, inputs: torch.Tensor, patient: torch.Tensor, device: torch.device, embeddings: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities ``[B, 14]`` and, when asked and there is a network, the image
        embeddings ``[B, d]`` of the unmirrored images, from the same forward pass (the mirror
        pass of ``tta_hflip`` is the only extra one). A classical model gives ``None``."""
        rebalance()  # this process's share of the host's cores, when it joined one (cxrmodel.threads)
        if self.classical is not None:
            return self.classical.predict_proba(inputs[:, 0].numpy(), patient.numpy()), None
        images = inputs.to(device, non_blocking=True)
        embedded = self.network.embed(images)
        if self.embedding_head is not None:
            probs = self.embedding_head.predict_proba(embedded.float().cpu().numpy()).astype(np.float32)
        else:
            patient = patient.to(device, non_blocking=True)
            logits = self.network.logits_from_embedding(embedded, patient)
            probs = network_probabilities(self.network, images, patient, self.tta_hflip, logits).float().cpu().numpy()
        return probs, embedded.float().cpu().numpy() if embeddings else None

    def _frame_loader(self, frame: pd.DataFrame, cache_root: Path, batch_size: int, transform=None) -> DataLoader:
        dataset = StudyDataset(
            cached_loader(ImageCache(cache_root, self.image_size), frame),
            patient_features(frame, self.age_scaler),
            transform=transform or self.input_transform,
        )
        return DataLoader(dataset, batch_size=batch_size, shuffle=False)

    def embed_frame(self, frame: pd.DataFrame, cache_root: Path, batch_size: int = 64, device: str = "auto") -> np.ndarray:
        """The network's image embeddings ``[N, d]`` for labelled studies read through the image cache."""
        if self.network is None:
            raise ValueError(f"a {self.kind} model has no network, so no image embeddings")
        loader = self._frame_loader(frame, cache_root, batch_size, eval_transform(self.image_size))
        return embed_loader(self.network, loader, resolve_device(device))

    def predict_frame(self, frame: pd.DataFrame, cache_root: Path, batch_size: int = 64, device: str = "auto") -> np.ndarray:
        """Probabilities ``[N, 14]`` for labelled studies read through the image cache."""
        dev = resolve_device(device)
        self.prepare(dev)
        chunks = [self.predict_batch(batch[0], batch[1], dev) for batch in self._frame_loader(frame, cache_root, batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, NUM_FINDINGS), dtype=np.float32)


@torch.no_grad()
def embed_loader(network: torch.nn.Module, loader: DataLoader, device: torch.device) -> np.ndarray:
    network.eval().to(device)
    chunks = [network.embed(batch[0].to(device)).float().cpu() for batch in loader]
    return torch.cat(chunks).numpy()


@torch.no_grad()
def embed_image_files(loaded: LoadedModel, paths: Sequence[str], batch_size: int = 32, device: str = "auto") -> np.ndarray:
    """Embeddings ``[N, d]`` of image files decoded from source (read_grayscale, resize_square,
    eval_transform): the same pixels the image cache would hold. Raises ImageDecodeError."""
    dev = resolve_device(device)
    network = loaded.network.eval().to(dev)
    transform = eval_transform(loaded.image_size)
    chunks = []
    for start in range(0, len(paths), batch_size):
        images = [
            transform(torch.from_numpy(resize_square(read_grayscale(p), loaded.image_size))[None])
            for p in paths[start : start + batch_size]
        ]
        chunks.append(network.embed(torch.stack(images).to(dev)).float().cpu())
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), dtype=np.float32)


def load_model_version(files: ModelVersionFiles) -> LoadedModel:
    """Build the network of ``files`` (or of its parent for embedding baselines; nothing for a
    classical model) and load the weights after checking their sha256 against the registry's."""
    if files.kind in CLASSICAL_KINDS:
        config = files.config
        classical = PixelLogisticModel.load(files.artifact_path, files.sha256)
        return LoadedModel(
            files.version_id,
            files.kind,
            None,
            config["image_size"],
            AgeScaler.from_dict(config["age_scaler"]),
            classical=classical,
        )
    if files.kind in NETWORK_KINDS:
        config = files.config
        recipe = config.get("train") or {}  # versions trained before these options: DenseNet121, no TTA
        network = build_model(files.kind, backbone=recipe.get("backbone", "densenet121"))
        network.load_state_dict(load_state_dict(files.artifact_path, files.sha256))
        return LoadedModel(
            files.version_id,
            files.kind,
            network.eval(),
            config["image_size"],
            AgeScaler.from_dict(config["age_scaler"]),
            tta_hflip=bool(recipe.get("tta_hflip", False)),
        )
    if files.kind not in EMBEDDING_HEADS:
        raise ValueError(f"model version {files.name} has unknown kind {files.kind!r}")
    if files.parent is None:
        raise ValueError(f"model version {files.name} ({files.kind}) needs its parent network")
    base = load_model_version(files.parent)
    head = EMBEDDING_HEADS[files.kind](files.artifact_path, files.sha256)
    return LoadedModel(files.version_id, files.kind, base.network, base.image_size, base.age_scaler, embedding_head=head)
