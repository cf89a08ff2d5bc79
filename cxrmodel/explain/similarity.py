"""Similar-case retrieval (seed 000, section 6): cosine nearest neighbours among stored embeddings.

:class:`EmbeddingIndex` keeps L2-normalised float32 vectors with one string key each (the study
key). A query is one matrix product and an ``argpartition`` per query row; it is exact, and fast
enough for the NIH set (112k x 256 floats is about 115 MB). Saved as a plain ``.npz`` (no pickle).

With a :class:`~cxrmodel.explain.retrieval.EmbeddingWhitening` (:meth:`EmbeddingIndex.whitened`)
every vector, stored or queried, is centred and whitened before it is normalised: raw network
embeddings all have cosines of 0.90-1.00 with each other, whitened ones spread out, and the
ranking means more (see :mod:`cxrmodel.explain.retrieval`). The whitening is stored in the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from cxrmodel.explain.retrieval import DEFAULT_SHRINKAGE, EmbeddingWhitening, RetrievalQuality, retrieval_quality
from cxrmodel.io import atomic_write, sha256_file
from cxrmodel.models.artifacts import ArtifactIntegrityError

_EPS = 1e-12


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); an all-zero row stays zero (cosine 0 with anything)."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"expected a 2-D array [N, d], got shape {v.shape}")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.maximum(norms, _EPS)).astype(np.float32, copy=False)


class EmbeddingIndex:
    """Exact cosine-similarity index over ``embeddings [N, d]`` labelled by ``keys`` (unique).

    With ``whitening`` the embeddings (and every query) are whitened before they are
    normalised; ``normalised=True`` takes vectors already transformed and unit-length."""

    def __init__(
        self,
        embeddings: np.ndarray,
        keys: Sequence[str],
        *,
        normalised: bool = False,
        whitening: EmbeddingWhitening | None = None,
    ) -> None:
        self.whitening = whitening
        vectors = np.asarray(embeddings, dtype=np.float32) if normalised else self.encode(embeddings)
        if vectors.ndim != 2:
            raise ValueError(f"expected a 2-D array [N, d], got shape {vectors.shape}")
        keys = [str(k) for k in keys]
        if len(keys) != len(vectors):
            raise ValueError(f"{len(keys)} keys for {len(vectors)} embeddings")
        if len(set(keys)) != len(keys):
            raise ValueError("index keys must be unique")
        self.vectors = np.ascontiguousarray(vectors)
        self.keys = keys
        self._position = {k: i for i, k in enumerate(keys)}

    @classmethod
    def whitened(
        cls,
        embeddings: np.ndarray,
        keys: Sequence[str],
        fit_on: np.ndarray | None = None,
        shrinkage: float = DEFAULT_SHRINKAGE,
    ) -> EmbeddingIndex:
        """An index whose vectors are whitened by a transform fitted on ``fit_on`` (the training
        split's embeddings; default: ``embeddings`` themselves)."""
        whitening = EmbeddingWhitening.fit(embeddings if fit_on is None else fit_on, shrinkage)
        return cls(embeddings, keys, whitening=whitening)

    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        """Raw embeddings ``[M, d]`` as the index compares them: whitened (if it whitens), unit length."""
        vectors = np.asarray(embeddings, dtype=np.float32)
        if self.whitening is not None and vectors.size:
            vectors = self.whitening.transform(vectors)
        return l2_normalise(vectors)

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self._position

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def vector(self, key: str) -> np.ndarray:
        """The stored vector of ``key`` (unit length, whitened when the index whitens)."""
        return self.vectors[self._position[key]]

    def query(
        self,
        vectors: np.ndarray,
        k: int,
        exclude_keys: Iterable[str | None] | str | None = None,
    ) -> list[list[tuple[str, float]]]:
        """The ``k`` most similar stored keys for each query row (raw embeddings: the index
        whitens them as it whitened its own), most similar first, as ``(key, cosine)``. ``exclude_keys`` is one key per query row (``None`` for none; for
        instance the query study's own key) or a single key applied to every row; an excluded
        key absent from the index is ignored. Fewer than ``k`` results come back when the index
        is smaller. Ties are broken by index position."""
        q = np.asarray(vectors, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or (len(self) and q.shape[1] != self.dim):
            raise ValueError(f"expected query vectors [M, {self.dim}], got shape {np.shape(vectors)}")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        m = len(q)
        if exclude_keys is None or isinstance(exclude_keys, str):
            excluded = [exclude_keys] * m
        else:
            excluded = list(exclude_keys)
            if len(excluded) != m:
                raise ValueError(f"{len(excluded)} exclude keys for {m} query vectors")
        n = len(self)
        if n == 0 or k == 0 or m == 0:
            return [[] for _ in range(m)]
        sims = self.encode(q) @ self.vectors.T  # [M, N]
        rows_to_drop = [(i, self._position[key]) for i, key in enumerate(excluded) if key is not None and key in self._position]
        for i, j in rows_to_drop:
            sims[i, j] = -np.inf
        take = min(k + (1 if rows_to_drop else 0), n)
        if take < n:
            # Negated with a stable order: argpartition, then sort the chosen few.
            part = np.argpartition(-sims, take - 1, axis=1)[:, :take]
        else:
            part = np.broadcast_to(np.arange(n), (m, n))
        out: list[list[tuple[str, float]]] = []
        for i in range(m):
            cand = part[i]
            scores = sims[i, cand]
            order = np.lexsort((cand, -scores))  # by score descending, then position
            row = [(self.keys[int(cand[j])], float(scores[j])) for j in order if np.isfinite(scores[j])]
            out.append(row[:k])
        return out

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write ``keys``, ``vectors`` (and the whitening) to an ``.npz`` atomically; return the file's sha256."""
        arrays = {"keys": np.asarray(self.keys, dtype=str), "vectors": self.vectors}
        if self.whitening is not None:
            arrays |= {"whitening_mean": self.whitening.mean, "whitening_matrix": self.whitening.matrix}
        return sha256_file(atomic_write(path, lambda fh: np.savez(fh, **arrays)))

    @classmethod
    def load(cls, path: str | os.PathLike[str], expected_sha256: str | None = None) -> EmbeddingIndex:
        """Read an index written by :meth:`save` (no pickle); with ``expected_sha256``, refuse a
        file whose bytes differ (:class:`ArtifactIntegrityError`)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"embedding index not found: {path}")
        if expected_sha256 is not None and sha256_file(path) != expected_sha256:
            raise ArtifactIntegrityError(f"{path} does not match its recorded sha256; refusing to load")
        with np.load(path, allow_pickle=False) as data:
            keys = [str(k) for k in data["keys"]]
            vectors = np.asarray(data["vectors"], dtype=np.float32)
            whitening = None
            if "whitening_mean" in data.files:
                whitening = EmbeddingWhitening(
                    np.asarray(data["whitening_mean"], np.float32), np.asarray(data["whitening_matrix"], np.float32)
                )
        return cls(vectors, keys, normalised=True, whitening=whitening)  # stored unit-length: keep the exact bits


def build_retrieval_index(
    embeddings: np.ndarray,
    keys: Sequence[str],
    labels: np.ndarray,
    fit_on: np.ndarray | None = None,
    k: int = 5,
) -> tuple[EmbeddingIndex, RetrievalQuality | None]:
    """The whitened index of labelled studies (whitening fitted on the rows where ``fit_on`` is
    true, the training split; on all rows when fewer than two are) and its leave-one-out
    precision@k beside random retrieval and the prevalence list (``None`` under ``k + 1`` studies)."""
    vectors = np.asarray(embeddings, dtype=np.float32)
    mask = np.ones(len(vectors), dtype=bool) if fit_on is None else np.asarray(fit_on, dtype=bool)
    index = EmbeddingIndex.whitened(vectors, keys, fit_on=vectors[mask] if mask.sum() >= 2 else vectors)
    quality = retrieval_quality(index.vectors, labels, k) if len(index) > k else None
    return index, quality
