"""A 2-D map of study embeddings (t-SNE) for the evaluation report."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.manifold import TSNE

__all__ = ["embedding_map"]


def embedding_map(embeddings: ArrayLike, max_points: int = 2000, random_state: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Project ``[N, d]`` embeddings to 2-D with :class:`sklearn.manifold.TSNE`.

    At most ``max_points`` rows are mapped (a seeded uniform sample, kept in input order).
    Returns ``(xy [M, 2] float32, rows [M] int64)``, ``rows`` indexing the input. Perplexity
    is 30, or less for small inputs (t-SNE needs perplexity < M). Needs at least 4 rows.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D [N, d]; got shape {x.shape}")
    if x.shape[0] < 4:
        raise ValueError(f"need at least 4 embeddings for a map; got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    if max_points < 4:
        raise ValueError(f"max_points must be at least 4; got {max_points}")
    rows = np.arange(x.shape[0], dtype=np.int64)
    if x.shape[0] > max_points:
        rows = np.sort(np.random.default_rng(random_state).choice(x.shape[0], size=max_points, replace=False))
    perplexity = float(min(30.0, (len(rows) - 1) / 3))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=random_state).fit_transform(x[rows])
    return xy.astype(np.float32), rows
