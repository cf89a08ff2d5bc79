"""How much similar-case retrieval means: precision@k against image-blind baselines, and the
whitening that makes cosine similarities discriminative.

A retrieved case is *relevant* when it shares at least one label with the query, where "No
Finding" counts as a label of its own (two normal studies match; otherwise a normal query could
never be answered well, and normal studies are most of any chest X-ray set).

* :func:`precision_at_k`: leave-one-out over an index (each study queries all the others) or
  held-out queries against an index.
* :func:`random_precision_at_k`: the exact expected precision of random retrieval (the share of
  relevant cases among the candidates, per query, averaged).
* :func:`prevalence_precision_at_k`: the best image-blind retriever, one fixed list of the ``k``
  cases that match most studies of the index (in practice: normal studies), for every query.

Raw embeddings of a network trained with a ReLU before its embedding are all in one orthant and
share a large common component, so every cosine is 0.90-1.00 and the ranking is mostly noise.
:class:`EmbeddingWhitening` (fitted on the training embeddings) removes their mean and
rescales the principal directions to unit variance (with shrinkage towards the mean variance,
so directions with little variance are not blown up); cosines of whitened vectors spread over
the whole range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Shrinkage of the whitening's eigenvalues towards their mean (0: full whitening, 1: centring).
DEFAULT_SHRINKAGE = 0.1


def label_sets(labels: np.ndarray) -> np.ndarray:
    """``bool [N, C + 1]``: the ``C`` finding columns, then "No Finding" (no finding at all)."""
    y = np.asarray(labels).astype(bool)
    if y.ndim != 2:
        raise ValueError(f"labels must be [N, C], got shape {y.shape}")
    return np.concatenate([y, ~y.any(axis=1, keepdims=True)], axis=1)


def relevance(query_labels: np.ndarray, index_labels: np.ndarray) -> np.ndarray:
    """``bool [M, N]``: query ``i`` and indexed case ``j`` share at least one label."""
    q, x = label_sets(query_labels).astype(np.int32), label_sets(index_labels).astype(np.int32)
    return (q @ x.T) > 0


def _top_k(similarity: np.ndarray, k: int) -> np.ndarray:
    """``[M, k]`` column indices of the ``k`` largest values per row (ties: lower index first)."""
    order = np.argsort(-similarity, axis=1, kind="stable")
    return order[:, :k]


def _unit(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def precision_at_k(
    index_vectors: np.ndarray,
    index_labels: np.ndarray,
    k: int = 5,
    query_vectors: np.ndarray | None = None,
    query_labels: np.ndarray | None = None,
) -> float:
    """Mean over queries of the share of the ``k`` most cosine-similar indexed cases that are
    relevant. Without queries: leave-one-out over the index (a case never retrieves itself)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    leave_one_out = query_vectors is None
    if leave_one_out:
        query_vectors, query_labels = index_vectors, index_labels
    similarity = _unit(query_vectors) @ _unit(index_vectors).T
    if leave_one_out:
        np.fill_diagonal(similarity, -np.inf)
    available = similarity.shape[1] - (1 if leave_one_out else 0)
    if available < k:
        raise ValueError(f"an index of {similarity.shape[1]} cases cannot give {k} neighbours per query")
    top = _top_k(similarity, k)
    relevant = relevance(query_labels, index_labels)
    return float(np.take_along_axis(relevant, top, axis=1).mean())


def random_precision_at_k(index_labels: np.ndarray, query_labels: np.ndarray | None = None) -> float:
    """Expected precision@k of retrieving uniformly at random (any ``k``): per query, the share
    of relevant candidates; leave-one-out when ``query_labels`` is None."""
    leave_one_out = query_labels is None
    relevant = relevance(index_labels if leave_one_out else query_labels, index_labels)
    if leave_one_out:
        np.fill_diagonal(relevant, False)
        return float((relevant.sum(axis=1) / (len(index_labels) - 1)).mean())
    return float(relevant.mean())


def prevalence_precision_at_k(index_labels: np.ndarray, k: int = 5, query_labels: np.ndarray | None = None) -> float:
    """Precision@k of one fixed list for every query: the ``k`` indexed cases relevant to the
    most indexed studies (chosen on the index labels alone; a query never gets itself, the
    next case of the ranking takes its place)."""
    match_rate = relevance(index_labels, index_labels).mean(axis=0)
    ranking = np.argsort(-match_rate, kind="stable")
    leave_one_out = query_labels is None
    relevant = relevance(index_labels if leave_one_out else query_labels, index_labels)
    hits = []
    for i in range(len(relevant)):
        chosen = [j for j in ranking[: k + 1] if not (leave_one_out and j == i)][:k]
        hits.append(relevant[i, chosen].mean())
    return float(np.mean(hits))


@dataclass(frozen=True)
class EmbeddingWhitening:
    """``transform(x) = (x - mean) @ matrix``: centring and (shrunk) PCA whitening, fitted on
    training embeddings ``[N, d]``; ``matrix`` is ``[d, d]``."""

    mean: np.ndarray
    matrix: np.ndarray

    @classmethod
    def fit(cls, embeddings: np.ndarray, shrinkage: float = DEFAULT_SHRINKAGE) -> EmbeddingWhitening:
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"need at least 2 embeddings [N, d], got shape {x.shape}")
        if not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
        mean = x.mean(axis=0)
        covariance = np.cov(x - mean, rowvar=False)
        eigenvalues, eigenvectors = np.linalg.eigh(np.atleast_2d(covariance))
        eigenvalues = np.clip(eigenvalues, 0.0, None)
        level = float(eigenvalues.mean()) or 1.0
        scale = 1.0 / np.sqrt((1 - shrinkage) * eigenvalues + shrinkage * level + 1e-12 * level)
        matrix = (eigenvectors * scale) @ eigenvectors.T  # ZCA: stays in the embedding's own axes
        return cls(mean.astype(np.float32), matrix.astype(np.float32))

    def transform(self, embeddings: np.ndarray) -> np.ndarray:
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.shape[1] != len(self.mean):
            raise ValueError(f"expected embeddings [N, {len(self.mean)}], got shape {x.shape}")
        return ((x - self.mean) @ self.matrix).astype(np.float32)


@dataclass(frozen=True)
class RetrievalQuality:
    """Leave-one-out precision@k of an index and its image-blind baselines."""

    k: int
    precision: float
    random: float
    prevalence: float
    n: int

    def as_config(self) -> dict[str, float | int]:
        """What a model version stores beside its embedding index."""
        return {
            "retrieval_k": self.k,
            "retrieval_precision_at_k": round(self.precision, 4),
            "retrieval_random_precision_at_k": round(self.random, 4),
            "retrieval_prevalence_precision_at_k": round(self.prevalence, 4),
            "retrieval_n": self.n,
        }


def retrieval_quality(vectors: np.ndarray, labels: np.ndarray, k: int = 5) -> RetrievalQuality:
    """Leave-one-out precision@k of ``vectors`` (as an index would compare them) beside random
    retrieval and the prevalence list."""
    return RetrievalQuality(
        k,
        precision_at_k(vectors, labels, k),
        random_precision_at_k(labels),
        prevalence_precision_at_k(labels, k),
        len(labels),
    )
