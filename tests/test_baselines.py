"""Seed 000's embedding baselines: the multi-label MLP and the GridSearchCV-tuned k-NN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxrmodel.models.artifacts import ArtifactIntegrityError, read_metadata
from cxrmodel.models.embedding import NEIGHBOUR_GRID, KnnEmbeddingModel, MlpEmbeddingModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_CLASSES = 14


def separable_problem(n: int, d: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings with an offset and uneven scales (so standardisation matters) and 14 labels,
    each a half-space ``x @ w_c > b_c`` (prevalence between about 15 % and 50 %)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d))
    w = rng.normal(size=(d, N_CLASSES))
    scores = z @ w / np.sqrt(d)
    bias = np.quantile(scores, np.linspace(0.5, 0.85, N_CLASSES), axis=0).diagonal()
    labels = (scores > bias).astype(np.uint8)
    embeddings = (z * rng.uniform(0.5, 20.0, size=d) + rng.uniform(-50, 50, size=d)).astype(np.float32)
    return embeddings, labels


@pytest.fixture(scope="module")
def problem():
    x, y = separable_problem(1400, seed=1)
    return x[:1000], y[:1000], x[1000:], y[1000:]


@pytest.fixture(scope="module")
def mlp(problem) -> MlpEmbeddingModel:
    x, y, _, _ = problem
    return MlpEmbeddingModel.fit(x, y, epochs=60, patience=10, batch_size=64, seed=0)


# --------------------------------------------------------------------------- MLP


def test_mlp_architecture_and_standardisation(mlp, problem):
    layers = [type(m).__name__ for m in mlp.network]
    assert layers == ["Linear", "ReLU", "Dropout", "Linear"]
    assert (mlp.network[0].in_features, mlp.network[0].out_features) == (24, 128)
    assert mlp.network[2].p == 0.5
    assert mlp.network[3].out_features == N_CLASSES
    x = problem[0]
    # mean/std come from the 90 % of rows actually fitted on: close to the full-set statistics
    np.testing.assert_allclose(mlp.mean, x.mean(axis=0), atol=0.15 * x.std(axis=0).max())
    np.testing.assert_allclose(mlp.std, x.std(axis=0), rtol=0.1)


def test_mlp_learns_linearly_separable_labels(mlp, problem):
    _, _, x_test, y_test = problem
    probs = mlp.predict_proba(x_test)
    assert probs.shape == (len(x_test), N_CLASSES)
    assert np.all((probs >= 0) & (probs <= 1))
    aurocs = [roc_auc_score(y_test[:, c], probs[:, c]) for c in range(N_CLASSES)]
    assert min(aurocs) > 0.95, np.round(aurocs, 3)


def test_mlp_cannot_learn_shuffled_labels(problem):
    """The AUROC check above can fail: with labels unrelated to the inputs the MLP is near chance."""
    x, y, x_test, y_test = problem
    rng = np.random.default_rng(5)
    model = MlpEmbeddingModel.fit(x, y[rng.permutation(len(y))], epochs=20, batch_size=64, seed=0)
    probs = model.predict_proba(x_test)
    mean_auroc = np.mean([roc_auc_score(y_test[:, c], probs[:, c]) for c in range(N_CLASSES)])
    assert 0.35 < mean_auroc < 0.65


def test_mlp_early_stopping_keeps_best_held_out_epoch(mlp):
    losses = [h["val_loss"] for h in mlp.history]
    assert len(losses) == mlp.epochs_run <= 60
    assert mlp.best_epoch == int(np.argmin(losses)) + 1
    assert mlp.val_loss == pytest.approx(min(losses))
    if mlp.epochs_run < 60:  # stopped early: exactly `patience` epochs without improvement
        assert mlp.epochs_run - mlp.best_epoch == 10


def test_mlp_stops_early_when_held_out_loss_stops_improving(problem):
    """Noise labels: the held-out loss soon rises, training stops ``patience`` epochs after its
    best epoch, and the returned weights are that epoch's."""
    x, y = problem[0][:300], problem[1][:300]
    noise = np.random.default_rng(3).integers(0, 2, size=y.shape).astype(np.uint8)
    model = MlpEmbeddingModel.fit(x, noise, epochs=300, patience=5, batch_size=32, seed=0)
    assert model.epochs_run < 300
    assert model.epochs_run - model.best_epoch == 5
    losses = [h["val_loss"] for h in model.history]
    assert model.best_epoch == int(np.argmin(losses)) + 1
    # the kept weights reproduce the best epoch's held-out loss (same 10 % split as fit uses)
    order = np.random.default_rng(0).permutation(len(x))
    val = order[: round(len(x) * 0.1)]
    p = np.clip(model.predict_proba(x[val]).astype(np.float64), 1e-7, 1 - 1e-7)
    bce = -np.mean(noise[val] * np.log(p) + (1 - noise[val]) * np.log(1 - p))
    assert bce == pytest.approx(min(losses), rel=1e-4)


def test_mlp_is_deterministic_by_seed_and_leaves_global_rng_alone(problem):
    x, y = problem[0][:300], problem[1][:300]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = MlpEmbeddingModel.fit(x, y, epochs=5, seed=7)
    after = torch.rand(1)
    b = MlpEmbeddingModel.fit(x, y, epochs=5, seed=7)
    c = MlpEmbeddingModel.fit(x, y, epochs=5, seed=8)
    assert torch.equal(before, after)
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))
    assert not np.array_equal(a.predict_proba(x), c.predict_proba(x))


def test_mlp_save_load_round_trip(mlp, problem, tmp_path):
    path = tmp_path / "models" / "mlp.safetensors"
    sha = mlp.save(path)
    loaded = MlpEmbeddingModel.load(path, sha)
    x_test = problem[2]
    np.testing.assert_array_equal(loaded.predict_proba(x_test), mlp.predict_proba(x_test))
    np.testing.assert_array_equal(loaded.mean, mlp.mean)
    np.testing.assert_array_equal(loaded.std, mlp.std)
    meta = read_metadata(path)
    assert (meta["input_dim"], meta["hidden_dim"], meta["num_classes"]) == (24, 128, N_CLASSES)
    assert (meta["best_epoch"], meta["epochs_run"], meta["max_epochs"]) == (mlp.best_epoch, mlp.epochs_run, 60)
    assert sorted(p.name for p in path.parent.iterdir()) == ["mlp.safetensors"]  # no temp file left


def test_mlp_load_refuses_wrong_sha(mlp, tmp_path):
    path = tmp_path / "mlp.safetensors"
    sha = mlp.save(path)
    with pytest.raises(ArtifactIntegrityError):
        MlpEmbeddingModel.load(path, "0" * 64)
    # tampered bytes: the recorded sha no longer matches
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError):
        MlpEmbeddingModel.load(path, sha)


def test_mlp_rejects_bad_inputs(mlp):
    with pytest.raises(ValueError):
        MlpEmbeddingModel.fit(np.zeros((1, 4)), np.zeros((1, N_CLASSES)))
    with pytest.raises(ValueError):
        MlpEmbeddingModel.fit(np.zeros((10, 4)), np.zeros((9, N_CLASSES)))
    with pytest.raises(ValueError):
        mlp.predict_proba(np.zeros((3, 5), dtype=np.float32))


# --------------------------------------------------------------------------- k-NN


@pytest.fixture(scope="module")
def knn(problem) -> KnnEmbeddingModel:
    x, y, _, _ = problem
    return KnnEmbeddingModel.fit(x[:400], y[:400])


def test_knn_picks_k_from_the_grid_and_predicts(knn, problem):
    assert NEIGHBOUR_GRID == (3, 5, 7, 9, 11)
    assert knn.n_neighbors in NEIGHBOUR_GRID
    assert knn.pipeline[-1].n_neighbors == knn.n_neighbors
    assert knn.cv_score is not None and knn.cv_score > 0.7
    _, _, x_test, y_test = problem
    probs = knn.predict_proba(x_test)
    assert probs.shape == (len(x_test), N_CLASSES)
    assert np.mean([roc_auc_score(y_test[:, c], probs[:, c]) for c in range(N_CLASSES)]) > 0.75


def test_knn_grid_search_scores_every_usable_k(problem, monkeypatch):
    """The search really tries the grid: with 10 rows and 5 folds only k < 8 can be fitted, and
    the chosen k is the best-scoring of 3, 5, 7."""
    import cxrmodel.models.embedding as baselines

    seen = {}
    real = baselines.GridSearchCV

    class Spy(real):
        def fit(self, X, y=None, **kw):
            out = super().fit(X, y, **kw)
            seen["grid"] = list(self.param_grid["kneighborsclassifier__n_neighbors"])
            seen["scores"] = list(self.cv_results_["mean_test_score"])
            return out

    monkeypatch.setattr(baselines, "GridSearchCV", Spy)
    x, y = problem[0][:200], problem[1][:200]
    model = KnnEmbeddingModel.fit(x, y)
    assert seen["grid"] == [3, 5, 7, 9, 11]
    assert model.n_neighbors == seen["grid"][int(np.argmax(seen["scores"]))]

    small = KnnEmbeddingModel.fit(x[:10], y[:10])
    assert seen["grid"] == [3, 5, 7]
    assert small.n_neighbors in (3, 5, 7)


def test_knn_save_load_round_trip_and_sha(knn, problem, tmp_path):
    path = tmp_path / "knn.npz"
    sha = knn.save(path)
    loaded = KnnEmbeddingModel.load(path, sha)
    assert loaded.n_neighbors == knn.n_neighbors
    np.testing.assert_array_equal(loaded.predict_proba(problem[2]), knn.predict_proba(problem[2]))
    with pytest.raises(ArtifactIntegrityError):
        KnnEmbeddingModel.load(path, "f" * 64)
