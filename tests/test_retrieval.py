"""Retrieval quality (precision@k against random retrieval and the prevalence list) and the
whitening of embeddings, hand-checked; the whitened index saved and loaded."""

from __future__ import annotations

import numpy as np
import pytest

from cxrmodel.explain.retrieval import (
    EmbeddingWhitening,
    label_sets,
    precision_at_k,
    prevalence_precision_at_k,
    random_precision_at_k,
    relevance,
    retrieval_quality,
)
from cxrmodel.explain.similarity import EmbeddingIndex, build_retrieval_index, l2_normalise


def _labels(rows: list[list[int]]) -> np.ndarray:
    """Rows of finding indices -> ``[N, 14]`` 0/1."""
    out = np.zeros((len(rows), 14), dtype=np.uint8)
    for i, findings in enumerate(rows):
        out[i, findings] = 1
    return out


# Four studies: two normal, one with findings 0 and 1, one with finding 1.
LABELS = _labels([[], [], [0, 1], [1]])


def test_no_finding_is_a_label_of_its_own():
    sets = label_sets(LABELS)
    assert sets.shape == (4, 15)
    assert sets[:, 14].tolist() == [True, True, False, False]
    assert relevance(LABELS, LABELS).astype(int).tolist() == [
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 1, 1],
        [0, 0, 1, 1],
    ]


def test_precision_at_k_leave_one_out_hand_checked():
    # study 0 is nearest to 2 then 1; 1 nearest to 0; 2 nearest to 3; 3 nearest to 0
    vectors = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, -0.6], [0.6, -0.8]])
    # k=1: 0 -> 1 (normal, relevant), 1 -> 0 (relevant), 2 -> 3 (shares 1), 3 -> 2 (shares 1)
    assert precision_at_k(vectors, LABELS, k=1) == pytest.approx(1.0)
    # cosines: 0 with 1 .994, 0 with 2 .8, 0 with 3 .6; k=2 for 0: {1, 2} -> 1/2
    # 1: {0 (.994), 2 (.73)} -> 1/2 ; 2: {3 (.96), 0 (.8)} -> 1/2 ; 3: {2 (.96), 0 (.6)} -> 1/2
    assert precision_at_k(vectors, LABELS, k=2) == pytest.approx(0.5)
    # random: each study has 1 relevant of 3 others
    assert random_precision_at_k(LABELS) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="cannot give"):
        precision_at_k(vectors, LABELS, k=4)


def test_precision_at_k_for_held_out_queries():
    index = np.array([[1.0, 0.0], [0.0, 1.0]])
    index_labels = _labels([[], [2]])
    queries = np.array([[0.9, 0.1], [0.9, 0.2]])
    query_labels = _labels([[], [2]])
    assert precision_at_k(index, index_labels, 1, queries, query_labels) == pytest.approx(0.5)
    assert random_precision_at_k(index_labels, query_labels) == pytest.approx(0.5)


def test_prevalence_list_hand_checked():
    labels = _labels([[], [], [], [3], [3, 4]])
    # match rates over the index: normals 3/5 each, study 3: 2/5, study 4: 2/5
    # k=2 fixed list: studies 0, 1 (ties by position); leave-one-out drops the query itself
    # queries 0, 1, 2 (normal): 0 -> {1, 2}: 1; 1 -> {0, 2}: 1; 2 -> {0, 1}: 1; 3 -> {0, 1}: 0; 4: 0
    assert prevalence_precision_at_k(labels, k=2) == pytest.approx(3 / 5)
    quality = retrieval_quality(np.eye(5), labels, k=2)
    assert quality.prevalence == pytest.approx(3 / 5)
    assert quality.random == pytest.approx(np.mean([2 / 4, 2 / 4, 2 / 4, 1 / 4, 1 / 4]))
    assert quality.as_config()["retrieval_n"] == 5


def test_whitening_centres_and_decorrelates():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(6, 6))
    x = rng.normal(size=(500, 6)) @ mixing + 5.0  # correlated, far from the origin
    full = EmbeddingWhitening.fit(x, shrinkage=0.0).transform(x)
    np.testing.assert_allclose(full.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(full, rowvar=False), np.eye(6), atol=1e-3)
    centring = EmbeddingWhitening.fit(x, shrinkage=1.0)  # only centres and rescales uniformly
    scaled = centring.transform(x)
    np.testing.assert_allclose(scaled * np.sqrt(np.cov(x - x.mean(0), rowvar=False).diagonal().mean()), x - x.mean(0), atol=1e-3)


def test_raw_embeddings_have_uninformative_cosines_and_whitening_spreads_them():
    """Non-negative embeddings with a large shared component: every raw cosine is close to 1."""
    rng = np.random.default_rng(1)
    common = np.abs(rng.normal(size=32)) * 5
    x = np.maximum(common + rng.normal(size=(200, 32)), 0)
    raw = l2_normalise(x) @ l2_normalise(x).T
    index = EmbeddingIndex.whitened(x, [f"s{i}" for i in range(200)])
    white = index.vectors @ index.vectors.T
    off = ~np.eye(200, dtype=bool)
    assert raw[off].min() > 0.85
    assert white[off].std() > 5 * raw[off].std()
    # a query is whitened the same way as the stored vectors
    hits = index.query(x[:3], k=1, exclude_keys=[None, None, None])
    assert [h[0][0] for h in hits] == ["s0", "s1", "s2"]
    assert all(h[0][1] == pytest.approx(1.0, abs=1e-5) for h in hits)


def test_whitened_index_round_trips_through_its_file(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 8)) + 3
    labels = _labels([[i % 3] if i % 2 else [] for i in range(30)])
    index, quality = build_retrieval_index(x, [f"k{i}" for i in range(30)], labels, fit_on=np.arange(30) < 20)
    assert quality is not None
    expected_white = EmbeddingWhitening.fit(x[:20]).transform(x)
    np.testing.assert_allclose(index.vectors, l2_normalise(expected_white), atol=1e-5)
    assert quality.precision == pytest.approx(precision_at_k(expected_white, labels, 5))
    sha = index.save(tmp_path / "index.npz")
    loaded = EmbeddingIndex.load(tmp_path / "index.npz", sha)
    assert loaded.whitening is not None
    np.testing.assert_array_equal(loaded.vectors, index.vectors)
    assert loaded.query(x[4:6], k=3) == index.query(x[4:6], k=3)
    # an unwhitened index still saves and loads as before
    plain = EmbeddingIndex(x, [f"k{i}" for i in range(30)])
    plain.save(tmp_path / "plain.npz")
    assert EmbeddingIndex.load(tmp_path / "plain.npz").whitening is None
