"""Seed 000's embedding baselines on image embeddings of a trained network.

* :class:`KnnEmbeddingModel`: a k-NN classifier tuned by GridSearchCV. Stored as a plain
  ``.npz`` (embeddings, labels, chosen k; no pickle) and rebuilt on load, after its sha256 has
  been checked.
* :class:`MlpEmbeddingModel`: a small multi-label MLP (``Linear(d, 128) -> ReLU ->
  Dropout(0.5) -> Linear(128, C)``) on standardised embeddings, trained with BCE-with-logits
  and Adam, early-stopped on a held-out tenth of the training embeddings. Stored as
  safetensors (weights plus the input mean/std; dimensions and epochs in the metadata).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from cxrmodel.evaluation.metrics import epoch_summary
from cxrmodel.io import atomic_write, sha256_file
from cxrmodel.models.artifacts import ArtifactIntegrityError, load_state_dict, read_metadata, save_state_dict
from cxrmodel.models.kinds import ModelKind

NEIGHBOUR_GRID = (3, 5, 7, 9, 11)


def _positive_proba(pipeline: Pipeline, embeddings: np.ndarray) -> np.ndarray:
    """``[N, C]`` probability of the positive label for each output of a multi-output k-NN."""
    knn: KNeighborsClassifier = pipeline[-1]
    outputs = pipeline.predict_proba(embeddings)
    columns = []
    for classes, proba in zip(knn.classes_, outputs, strict=True):
        classes = list(classes)
        columns.append(proba[:, classes.index(1)] if 1 in classes else np.zeros(len(embeddings)))
    return np.stack(columns, axis=1)


def _mean_auroc_scorer(estimator: Pipeline, X: np.ndarray, y: np.ndarray) -> float:
    auroc = epoch_summary(y.astype(int), _positive_proba(estimator, X))["mean_auroc"]
    return float(auroc) if auroc is not None else 0.0


@dataclass
class KnnEmbeddingModel:
    pipeline: Pipeline
    embeddings: np.ndarray
    labels: np.ndarray
    n_neighbors: int
    cv_score: float | None = None

    @classmethod
    def fit(
        cls, embeddings: np.ndarray, labels: np.ndarray, grid=NEIGHBOUR_GRID, folds: int = 5, seed: int = 0
    ) -> KnnEmbeddingModel:
        """Standardise, then choose ``n_neighbors`` from ``grid`` by 5-fold mean AUROC."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.uint8)
        usable = [k for k in grid if k < len(embeddings) * (folds - 1) / folds]
        search = GridSearchCV(
            make_pipeline(StandardScaler(), KNeighborsClassifier()),
            {"kneighborsclassifier__n_neighbors": usable},
            scoring=_mean_auroc_scorer,
            cv=KFold(folds, shuffle=True, random_state=seed),
        )
        search.fit(embeddings, labels)
        k = search.best_params_["kneighborsclassifier__n_neighbors"]
        return cls(search.best_estimator_, embeddings, labels, k, float(search.best_score_))

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        return _positive_proba(self.pipeline, np.asarray(embeddings, dtype=np.float32))

    def save(self, path: str | Path) -> str:
        arrays = {"embeddings": self.embeddings, "labels": self.labels, "n_neighbors": np.array(self.n_neighbors)}
        return sha256_file(atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays)))

    @classmethod
    def load(cls, path: str | Path, expected_sha256: str | None) -> KnnEmbeddingModel:
        if expected_sha256 is not None and sha256_file(path) != expected_sha256:
            raise ArtifactIntegrityError(f"{path} does not match its recorded sha256; refusing to load")
        with np.load(path, allow_pickle=False) as data:
            embeddings, labels, k = data["embeddings"], data["labels"], int(data["n_neighbors"])
        pipeline = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=k)).fit(embeddings, labels)
        return cls(pipeline, embeddings, labels, k)


# --------------------------------------------------------------------------- MLP

MLP_HIDDEN = 128
MLP_DROPOUT = 0.5


def _mlp(input_dim: int, num_classes: int, hidden: int = MLP_HIDDEN, dropout: float = MLP_DROPOUT) -> nn.Sequential:
    return nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))


@dataclass
class MlpEmbeddingModel:
    """Multi-label MLP on embeddings. ``predict_proba(embeddings [N, d]) -> [N, C]`` (sigmoid)."""

    network: nn.Sequential
    mean: np.ndarray  # [d] float32, training-embedding mean
    std: np.ndarray  # [d] float32, training-embedding std (1 where constant)
    best_epoch: int = 0
    epochs_run: int = 0
    max_epochs: int = 0
    val_loss: float | None = None
    history: list[dict] = field(default_factory=list)

    @property
    def input_dim(self) -> int:
        return int(self.network[0].in_features)

    @property
    def num_classes(self) -> int:
        return int(self.network[-1].out_features)

    @classmethod
    def fit(
        cls,
        embeddings: np.ndarray,
        labels: np.ndarray,
        epochs: int = 100,
        patience: int = 10,
        batch_size: int = 256,
        lr: float = 1e-3,
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> MlpEmbeddingModel:
        """Train on ``1 - val_fraction`` of the rows for at most ``epochs`` epochs; keep the weights
        of the epoch with the lowest BCE on the held-out rows, stopping after ``patience`` epochs
        without improvement. Deterministic for a given ``seed`` (the global RNGs are untouched)."""
        x = np.asarray(embeddings, dtype=np.float32)
        y = np.asarray(labels, dtype=np.float32)
        if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
            raise ValueError(f"need embeddings [N, d] and labels [N, C], got {x.shape} and {y.shape}")
        if len(x) < 2:
            raise ValueError("need at least 2 training rows (one is held out for early stopping)")
        order = np.random.default_rng(seed).permutation(len(x))
        n_val = min(len(x) - 1, max(1, int(round(len(x) * val_fraction))))
        val_idx, fit_idx = order[:n_val], order[n_val:]
        mean = x[fit_idx].mean(axis=0)
        std = x[fit_idx].std(axis=0)
        std = np.where(std > 1e-6, std, 1.0).astype(np.float32)
        xs = torch.from_numpy((x - mean) / std)
        yt = torch.from_numpy(y)
        x_fit, y_fit, x_val, y_val = xs[fit_idx], yt[fit_idx], xs[val_idx], yt[val_idx]

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = _mlp(x.shape[1], y.shape[1])
            generator = torch.Generator().manual_seed(seed)
            optimiser = torch.optim.Adam(network.parameters(), lr=lr)
            loss_fn = nn.BCEWithLogitsLoss()
            best_loss, best_epoch, best_state, stale = float("inf"), 0, copy.deepcopy(network.state_dict()), 0
            history: list[dict] = []
            epoch = 0
            for epoch in range(1, epochs + 1):
                network.train()
                perm = torch.randperm(len(x_fit), generator=generator)
                total = 0.0
                for start in range(0, len(perm), batch_size):
                    idx = perm[start : start + batch_size]
                    optimiser.zero_grad(set_to_none=True)
                    loss = loss_fn(network(x_fit[idx]), y_fit[idx])
                    loss.backward()
                    optimiser.step()
                    total += float(loss.detach()) * len(idx)
                network.eval()
                with torch.no_grad():
                    val_loss = float(loss_fn(network(x_val), y_val))
                history.append({"epoch": epoch, "train_loss": total / len(perm), "val_loss": val_loss})
                if val_loss < best_loss - 1e-7:
                    best_loss, best_epoch, best_state, stale = val_loss, epoch, copy.deepcopy(network.state_dict()), 0
                else:
                    stale += 1
                    if stale >= patience:
                        break
        network.load_state_dict(best_state)
        return cls(network.eval(), mean.astype(np.float32), std, best_epoch, epoch, epochs, best_loss, history)

    @torch.no_grad()
    def predict_proba(self, embeddings: np.ndarray, chunk: int = 8192) -> np.ndarray:
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"expected embeddings [N, {self.input_dim}], got {x.shape}")
        self.network.eval()
        out = [
            torch.sigmoid(self.network(torch.from_numpy((x[i : i + chunk] - self.mean) / self.std))).numpy()
            for i in range(0, len(x), chunk)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), dtype=np.float32)

    def save(self, path: str | Path) -> str:
        """Write weights plus ``input_mean``/``input_std`` as safetensors; return the sha256."""
        tensors = {f"net.{k}": v for k, v in self.network.state_dict().items()}
        tensors["input_mean"] = torch.from_numpy(np.asarray(self.mean, dtype=np.float32))
        tensors["input_std"] = torch.from_numpy(np.asarray(self.std, dtype=np.float32))
        metadata = {
            "kind": ModelKind.MLP_EMBEDDING.value,
            "input_dim": self.input_dim,
            "hidden_dim": int(self.network[0].out_features),
            "num_classes": self.num_classes,
            "dropout": float(self.network[2].p),
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "max_epochs": self.max_epochs,
            "val_loss": self.val_loss,
        }
        return save_state_dict(tensors, path, metadata=metadata)

    @classmethod
    def load(cls, path: str | Path, expected_sha256: str | None) -> MlpEmbeddingModel:
        """Rebuild from :meth:`save`'s file; :class:`ArtifactIntegrityError` when the sha256 differs."""
        tensors = load_state_dict(path, expected_sha256)
        meta = read_metadata(path)
        network = _mlp(int(meta["input_dim"]), int(meta["num_classes"]), int(meta["hidden_dim"]), float(meta["dropout"]))
        network.load_state_dict({k[len("net.") :]: v for k, v in tensors.items() if k.startswith("net.")})
        return cls(
            network.eval(),
            tensors["input_mean"].numpy(),
            tensors["input_std"].numpy(),
            int(meta.get("best_epoch", 0)),
            int(meta.get("epochs_run", 0)),
            int(meta.get("max_epochs", 0)),
            meta.get("val_loss"),
        )
