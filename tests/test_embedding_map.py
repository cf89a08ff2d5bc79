"""The 2-D t-SNE map of embeddings used by the evaluation report."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from cxrmodel.explain.embedding_map import embedding_map


def _clusters(n_per: int = 40, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, size=(3, dim))
    labels = np.repeat(np.arange(3), n_per)
    return centres[labels] + rng.normal(0, 1, size=(len(labels), dim)), labels


def test_map_keeps_separated_clusters_apart():
    x, labels = _clusters()
    xy, rows = embedding_map(x, random_state=0)
    assert xy.shape == (120, 2) and xy.dtype == np.float32
    np.testing.assert_array_equal(rows, np.arange(120))
    # Each point's nearest neighbours in the map come from its own cluster.
    knn = KNeighborsClassifier(n_neighbors=5).fit(xy, labels)
    assert knn.score(xy, labels) == 1.0


def test_map_samples_at_most_max_points_in_input_order_and_is_seeded():
    x, _ = _clusters()
    xy, rows = embedding_map(x, max_points=50, random_state=3)
    assert xy.shape == (50, 2)
    assert len(set(rows.tolist())) == 50 and np.all(np.diff(rows) > 0) and rows.max() < 120
    xy2, rows2 = embedding_map(x, max_points=50, random_state=3)
    np.testing.assert_array_equal(rows, rows2)
    np.testing.assert_allclose(xy, xy2)


def test_map_works_for_tiny_inputs_and_rejects_bad_ones():
    x, _ = _clusters(n_per=2)
    assert embedding_map(x)[0].shape == (6, 2)
    with pytest.raises(ValueError, match="at least 4"):
        embedding_map(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="2-D"):
        embedding_map(np.zeros(10))
    bad = np.ones((10, 3))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        embedding_map(bad)
