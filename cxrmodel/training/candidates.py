"""Cross-validating candidate recipes: every candidate kind retrained per patient-grouped fold
with its own training function, its held-out fold scored by
:func:`cxrmodel.evaluation.crossval.cross_validate`.

What the registry ranks by when the validation split is too small to rank: a recipe's mean
macro AUROC over folds of train + val, never the test split. Within a fold, a network keeps
the epoch chosen on a patient-grouped tenth of the fold's training part (the held-out fold
never steers training); an embedding baseline is fitted on the fold network's embeddings of
the fold's training part; the classical baseline on its pixels. Recipes that share a network
(seed 004's network and the k-NN and MLP heads on it) train it once per fold.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrmodel.config import ClassicalConfig, DataConfig, TrainConfig
from cxrmodel.data.metadata import labels_matrix
from cxrmodel.data.splits import patient_folds
from cxrmodel.device import resolve_device
from cxrmodel.evaluation.crossval import CrossValidationResult, cross_validate
from cxrmodel.models.embedding import KnnEmbeddingModel, MlpEmbeddingModel
from cxrmodel.models.kinds import CLASSICAL_KINDS, EMBEDDING_KINDS, NETWORK_KINDS, ModelKind
from cxrmodel.models.loading import LoadedModel
from cxrmodel.training.classical import fit_pixel_logistic, predict_pixel_logistic
from cxrmodel.training.data import prepare_training_data
from cxrmodel.training.loop import seed_everything
from cxrmodel.training.network import train_network

#: Share of a fold's training part that picks the network's epoch.
INNER_VAL_FOLDS = 10

HEAD_FITS: dict[str, Callable[[np.ndarray, np.ndarray], object]] = {
    ModelKind.KNN_EMBEDDING: lambda x, y: KnnEmbeddingModel.fit(x, y),
    ModelKind.MLP_EMBEDDING: lambda x, y: MlpEmbeddingModel.fit(x, y, seed=0),
}


@dataclass(frozen=True)
class CandidateRecipe:
    """How to train one candidate from scratch: its kind, the data recipe, and the network
    recipe (a network's own; an embedding baseline's parent's) or the classical one."""

    kind: ModelKind
    data: DataConfig
    train: TrainConfig | None = None
    classical: ClassicalConfig | None = None

    def __post_init__(self) -> None:
        if self.kind in CLASSICAL_KINDS and self.classical is None:
            raise ValueError(f"a {self.kind} recipe needs a classical config")
        if (self.kind in NETWORK_KINDS or self.kind in EMBEDDING_KINDS) and self.train is None:
            raise ValueError(f"a {self.kind} recipe needs a network recipe")

    def key(self) -> str:
        """Equal for recipes that train the same thing."""
        parts = {
            "kind": str(self.kind),
            "data": self.data.model_dump(mode="json"),
            "train": self.train.model_dump(mode="json") if self.train else None,
            "classical": self.classical.model_dump(mode="json") if self.classical else None,
        }
        return json.dumps(parts, sort_keys=True)

    def network_key(self) -> str:
        return json.dumps([self.data.model_dump(mode="json"), self.train.model_dump(mode="json")], sort_keys=True)


def _with_inner_split(rows: pd.DataFrame, seed: int) -> pd.DataFrame:
    """``rows`` with ``split`` 'train' or 'val' (one patient-grouped tenth, fewer folds for few patients)."""
    n_patients = rows["patient_id"].astype(str).nunique()
    folds = patient_folds(rows, min(INNER_VAL_FOLDS, n_patients), seed)
    return rows.assign(split=np.where(folds == 0, "val", "train"))


class _FoldNetworks:
    """Networks trained on one fold's training part, once per network recipe."""

    def __init__(self, cache_root: Path, work_dir: Path, device: torch.device) -> None:
        self.cache_root, self.work_dir, self.device = cache_root, work_dir, device
        self.trained: dict[tuple[int, str], LoadedModel] = {}

    def get(self, fold: int, recipe: CandidateRecipe, train_rows: pd.DataFrame) -> LoadedModel:
        key = (fold, recipe.network_key())
        if key not in self.trained:
            self.trained[key] = self._train(recipe, train_rows)
        return self.trained[key]

    def _train(self, recipe: CandidateRecipe, train_rows: pd.DataFrame) -> LoadedModel:
        seed_everything(recipe.train.seed)
        prepared = prepare_training_data(
            _with_inner_split(train_rows, recipe.data.split_seed), self.cache_root, recipe.data, recipe.train
        )
        with tempfile.TemporaryDirectory(dir=self.work_dir) as out:
            model, result = train_network(prepared, Path(out), recipe.train, None, self.device)
        model.load_state_dict(result.best_state)
        return LoadedModel(-1, recipe.train.architecture, model.eval(), recipe.data.image_size, prepared.scaler)


def _fit_predict(recipe: CandidateRecipe, rows: pd.DataFrame, folds: np.ndarray, networks: _FoldNetworks, cache_root: Path):
    def fit_predict(train_index: np.ndarray, test_index: np.ndarray) -> np.ndarray:
        train_rows, test_rows = rows.iloc[train_index].reset_index(drop=True), rows.iloc[test_index].reset_index(drop=True)
        if recipe.kind in CLASSICAL_KINDS:
            model, scaler = fit_pixel_logistic(train_rows, cache_root, recipe.data.image_size, recipe.classical)
            return predict_pixel_logistic(model, scaler, test_rows, cache_root, recipe.data.image_size)
        network = networks.get(int(folds[test_index[0]]), recipe, train_rows)
        if recipe.kind in NETWORK_KINDS:
            return network.predict_frame(test_rows, cache_root, device=str(networks.device))
        head = HEAD_FITS[recipe.kind](
            network.embed_frame(train_rows, cache_root, device=str(networks.device)), labels_matrix(train_rows)
        )
        return head.predict_proba(network.embed_frame(test_rows, cache_root, device=str(networks.device)))

    return fit_predict


def cross_validate_candidates(
    rows: pd.DataFrame,
    cache_root: Path,
    recipes: Mapping[str, CandidateRecipe],
    n_folds: int = 5,
    seed: int = 0,
    min_positives: int = 5,
    device: str = "auto",
) -> dict[str, CrossValidationResult]:
    """Per name in ``recipes``, the :class:`CrossValidationResult` of its recipe over
    ``n_folds`` patient-grouped folds of ``rows`` (labelled studies: train + val, never test).
    Names whose recipes are equal share one result."""
    if "test" in set(rows.get("split", pd.Series(dtype=object))):
        raise ValueError("cross-validation for model selection must not see the test split")
    rows = rows.reset_index(drop=True)
    folds = patient_folds(rows, n_folds, seed)
    labels = labels_matrix(rows)
    results: dict[str, CrossValidationResult] = {}
    by_key: dict[str, CrossValidationResult] = {}
    with tempfile.TemporaryDirectory(prefix="cxr-cv-") as work:
        networks = _FoldNetworks(Path(cache_root), Path(work), resolve_device(device))
        for name, recipe in recipes.items():
            key = recipe.key()
            if key not in by_key:
                by_key[key] = cross_validate(
                    _fit_predict(recipe, rows, folds, networks, Path(cache_root)), labels, folds, min_positives
                )
            results[name] = by_key[key]
    return results
