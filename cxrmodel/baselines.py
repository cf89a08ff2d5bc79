"""Seed 000's embedding baseline: a k-NN classifier on image embeddings, tuned by GridSearchCV.

The fitted model is stored as a plain ``.npz`` (embeddings, labels, chosen k; no pickle) and
rebuilt on load, after its sha256 has been checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from cxrmodel.artifacts import ArtifactIntegrityError, sha256_file
from cxrmodel.metrics import epoch_summary

NEIGHBOUR_GRID = (3, 5, 7, 9, 11)


def _positive_proba(pipeline: Pipeline, embeddings: np.ndarray) -> np.ndarray:
    """``[N, C]`` probability of the positive label for each output of a multi-output k-NN."""
    knn: KNeighborsClassifier = pipeline[-1]
    outputs = pipeline.predict_proba(embeddings)
    columns = []
    for classes, proba in zip(knn.classes_, outputs):
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
    def fit(cls, embeddings: np.ndarray, labels: np.ndarray, grid=NEIGHBOUR_GRID, folds: int = 5, seed: int = 0) -> KnnEmbeddingModel:
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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, embeddings=self.embeddings, labels=self.labels, n_neighbors=np.array(self.n_neighbors))
        tmp.replace(path)
        return sha256_file(path)

    @classmethod
    def load(cls, path: str | Path, expected_sha256: str | None) -> KnnEmbeddingModel:
        if expected_sha256 is not None and sha256_file(path) != expected_sha256:
            raise ArtifactIntegrityError(f"{path} does not match its recorded sha256; refusing to load")
        with np.load(path, allow_pickle=False) as data:
            embeddings, labels, k = data["embeddings"], data["labels"], int(data["n_neighbors"])
        pipeline = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=k)).fit(embeddings, labels)
        return cls(pipeline, embeddings, labels, k)
