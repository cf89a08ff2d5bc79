"""Seed 000's embedding baselines, fitted on a trained network's embeddings of the training
split: k-NN (GridSearchCV over k) and a small MLP, each saved beside its parent's folder with
the config its model version records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrmodel.data.metadata import labels_matrix
from cxrmodel.models.embedding import KnnEmbeddingModel, MlpEmbeddingModel
from cxrmodel.models.kinds import ModelKind
from cxrmodel.models.loading import LoadedModel


@dataclass(frozen=True)
class FittedBaseline:
    """An embedding baseline's kind, version name, artefact, sha256, config and size, ready to register."""

    kind: ModelKind
    name: str
    artifact_path: Path
    sha256: str
    config: dict
    parameter_count: int


def embed_training_split(parent: LoadedModel, frame: pd.DataFrame, cache_root: Path) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings ``[N, d]``, labels ``[N, 14]``) of the training split of ``frame``, embedded
    by the parent network through the image cache: what every embedding baseline is fitted on."""
    train_df = frame[frame["split"] == "train"].reset_index(drop=True)
    if train_df.empty:
        raise RuntimeError("no labelled studies in the training split")
    return parent.embed_frame(train_df, cache_root), labels_matrix(train_df)


def _parent_config(parent: LoadedModel, embeddings: np.ndarray) -> dict:
    return {"image_size": parent.image_size, "age_scaler": parent.age_scaler.to_dict(), "embedding_dim": int(embeddings.shape[1])}


def fit_knn_baseline(
    parent: LoadedModel, parent_name: str, embeddings: np.ndarray, labels: np.ndarray, models_dir: Path
) -> FittedBaseline:
    knn = KnnEmbeddingModel.fit(embeddings, labels)
    name = f"{ModelKind.KNN_EMBEDDING}-of-{parent_name}"
    path = Path(models_dir) / name / "knn.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {"n_neighbors": knn.n_neighbors, "cv_mean_auroc": knn.cv_score, **_parent_config(parent, embeddings)}
    return FittedBaseline(ModelKind.KNN_EMBEDDING, name, path, knn.save(path), config, int(embeddings.size))


def fit_mlp_baseline(
    parent: LoadedModel, parent_name: str, embeddings: np.ndarray, labels: np.ndarray, models_dir: Path
) -> FittedBaseline:
    """A small MLP (d -> 128 -> 14) early-stopped on a held-out tenth of the training split."""
    mlp = MlpEmbeddingModel.fit(embeddings, labels, seed=0)
    name = f"{ModelKind.MLP_EMBEDDING}-of-{parent_name}"
    path = Path(models_dir) / name / "mlp.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "hidden_dim": int(mlp.network[0].out_features),
        "dropout": float(mlp.network[2].p),
        "best_epoch": mlp.best_epoch,
        "epochs_run": mlp.epochs_run,
        "max_epochs": mlp.max_epochs,
        "held_out_bce": mlp.val_loss,
        **_parent_config(parent, embeddings),
    }
    parameters = sum(p.numel() for p in mlp.network.parameters())
    return FittedBaseline(ModelKind.MLP_EMBEDDING, name, path, mlp.save(path), config, parameters)
