"""Patient-level bootstrap confidence intervals for per-class AUROC and F1.

Studies of one patient are correlated (follow-up films, the same anatomy), so the unit of
resampling is the patient, not the image: every resample draws ``n_groups`` patients with
replacement, and a study counts as many times as its patient was drawn. Each resample is a
vector of integer study weights; AUROC and F1 are the sample-weighted metrics of
:func:`sklearn.metrics.roc_auc_score` and :func:`sklearn.metrics.f1_score` under those weights.
All resamples are evaluated at once with matrix products over patients (no Python loop over
resamples), so 1,000 resamples of 25,000 x 14 take seconds.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike

from cxrmodel.evaluation.metrics import apply_thresholds, validate_multilabel

__all__ = ["BootstrapResult", "bootstrap_ci", "bootstrap_counts", "weighted_auroc"]

# Cells of one dense [bins, resamples] block in the AUROC accumulation (about 64 MB of float64).
_BLOCK_CELLS = 8_000_000


@dataclass(frozen=True, eq=False)
class BootstrapResult:
    """Percentile intervals ``[low, high]`` from a patient-level bootstrap.

    ``auroc_ci`` and ``f1_ci`` are ``[C, 2]``; an ``auroc_ci`` row is NaN for a class whose
    labels hold a single value (AUROC undefined). ``n_auroc_defined`` ``[C]`` counts, per
    class, the resamples in which its AUROC was defined and that entered its interval.
    """

    auroc_ci: np.ndarray
    f1_ci: np.ndarray
    macro_auroc_ci: tuple[float, float]
    macro_f1_ci: tuple[float, float]
    n_resamples: int
    n_groups: int
    confidence: float
    n_auroc_defined: np.ndarray


def _group_codes(groups: ArrayLike, n_samples: int) -> tuple[np.ndarray, int]:
    """Integer code ``[N]`` per study (first-seen order) and the number of distinct groups."""
    g = np.asarray(groups, dtype=object)
    if g.shape != (n_samples,):
        raise ValueError(f"groups must have shape ({n_samples},) to match y_true; got {g.shape}")
    index: dict = {}
    codes = np.empty(n_samples, dtype=np.int64)
    for i, value in enumerate(g.tolist()):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise ValueError(f"groups[{i}] is missing (None/NaN): every study needs a patient id")
        codes[i] = index.setdefault(value, len(index))
    return codes, len(index)


def _membership(codes: np.ndarray, n_groups: int) -> sp.csr_matrix:
    """Sparse ``[G, N]`` 0/1 matrix: row g marks the studies of group g."""
    n = codes.size
    return sp.csr_matrix((np.ones(n), (codes, np.arange(n))), shape=(n_groups, n))


def bootstrap_counts(n_groups: int, n_resamples: int, random_state: int | np.random.Generator | None = 0) -> np.ndarray:
    """``[G, B]`` float64 draw counts: column b says how often each of ``n_groups`` groups was
    drawn when ``n_groups`` draws are made uniformly with replacement (each column sums to G)."""
    rng = np.random.default_rng(random_state)
    draws = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    offsets = (np.arange(n_resamples) * n_groups)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=n_resamples * n_groups)
    return np.ascontiguousarray(counts.reshape(n_resamples, n_groups).T, dtype=np.float64)


def _grouped_auroc(y: np.ndarray, score: np.ndarray, codes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUROC ``[B]`` of one class where study i has weight ``counts[codes[i], b]`` in resample b.

    Weighted Mann-Whitney statistic with half credit for tied scores (what ``roc_auc_score``
    computes with ``sample_weight``). The label with fewer studies plays the "positive" role
    (relabelling and negating scores leaves AUROC unchanged), and its distinct scores are the
    only levels: the other label's weights are summed into the bins between and on those
    levels by one sparse product, so the dense work is ``O(B x minority levels)``.
    NaN where a resample has no weight on one of the labels.
    """
    n_groups, n_resamples = counts.shape
    pos = y == 1
    if pos.sum() > (~pos).sum():
        pos, score = ~pos, -score
    if not pos.any() or pos.all():
        return np.full(n_resamples, np.nan)
    levels, pos_level = np.unique(score[pos], return_inverse=True)
    k = levels.size
    neg_score = score[~pos]
    neg_level = np.searchsorted(levels, neg_score, side="left")  # levels strictly below
    tie = np.zeros(neg_score.size, dtype=bool)
    inside = neg_level < k
    tie[inside] = levels[neg_level[inside]] == neg_score[inside]
    # Rows: [0, k) positive weight on level; [k, 2k) negative weight strictly below level
    # (index = number of levels below); [2k, 3k) negative weight tied with level; 3k: above all.
    neg_row = np.where(tie, 2 * k + neg_level, np.where(neg_level == k, 3 * k, k + neg_level))
    rows = np.concatenate([pos_level, neg_row])
    cols = np.concatenate([codes[pos], codes[~pos]])
    bins_by_group = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(3 * k + 1, n_groups))

    out = np.empty(n_resamples)
    step = max(1, _BLOCK_CELLS // (3 * k + 1))
    for start in range(0, n_resamples, step):
        w = bins_by_group @ counts[:, start : start + step]  # [3k + 1, b]
        p_level, neg_below, neg_tied = w[:k], w[k : 2 * k], w[2 * k : 3 * k]
        above = np.cumsum(p_level[::-1], axis=0)[::-1]  # positive weight on levels >= j
        num = (neg_below * above).sum(axis=0) + (neg_tied * (above - 0.5 * p_level)).sum(axis=0)
        total_pos = p_level.sum(axis=0)
        total_neg = neg_below.sum(axis=0) + neg_tied.sum(axis=0) + w[3 * k]
        den = total_pos * total_neg
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + step] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def weighted_auroc(y_true: ArrayLike, y_prob: ArrayLike, weights: ArrayLike) -> np.ndarray:
    """AUROC of one binary problem under each row of non-negative ``weights`` ``[B, N]``.

    Equals ``roc_auc_score(y_true, y_prob, sample_weight=weights[b])`` for every b (ties
    between a positive and a negative score count one half); NaN for a row that puts no
    weight on the positives or none on the negatives.
    """
    if np.ndim(y_true) != 1 or np.ndim(y_prob) != 1:
        raise ValueError("y_true and y_prob must be 1-D")
    t, p = validate_multilabel(np.asarray(y_true)[:, None], np.asarray(y_prob)[:, None])
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != t.shape[0]:
        raise ValueError(f"weights must have shape [B, {t.shape[0]}]; got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and non-negative")
    return _grouped_auroc(t[:, 0], p[:, 0], np.arange(t.shape[0]), np.ascontiguousarray(w.T))


def _percentile_ci(values: np.ndarray, confidence: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (math.nan, math.nan)
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return (float(low), float(high))


def bootstrap_ci(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    thresholds: float | ArrayLike,
    groups: ArrayLike,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    random_state: int | np.random.Generator | None = 0,
) -> BootstrapResult:
    """Percentile bootstrap intervals for per-class and macro AUROC and F1, resampling patients.

    ``y_true`` and ``y_prob`` are ``[N, C]``; ``thresholds`` a scalar or ``[C]`` (decision
    ``prob >= threshold``); ``groups`` ``[N]`` the patient id of each study (any hashable,
    not None/NaN). Each of the ``n_resamples`` resamples draws as many patients as there
    are, with replacement; a study's weight is the number of times its patient was drawn.

    Per resample, F1 is the weighted F1 of each class (``zero_division=0``) and macro F1
    their mean over all classes, as in :func:`cxrmodel.evaluation.metrics.evaluate_multilabel`. A class
    whose resample holds no positive or no negative study has no AUROC in that resample:
    the resample is left out of that class's distribution (counted in ``n_auroc_defined``),
    and macro AUROC of a resample averages the classes defined in it. The interval is the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of each distribution.
    Same ``random_state`` (an int), same result.
    """
    t, p = validate_multilabel(y_true, y_prob)
    pred = apply_thresholds(p, thresholds)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, numbers.Integral) or n_resamples < 1:
        raise ValueError(f"n_resamples must be an integer >= 1; got {n_resamples!r}")
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence}")
    n, n_classes = t.shape
    codes, n_groups = _group_codes(groups, n)
    counts = bootstrap_counts(n_groups, int(n_resamples), random_state)  # [G, B]

    # F1: weighted tp / fp / fn = draw counts x per-patient sums.
    member = _membership(codes, n_groups)
    hit = pred & t
    per_group = member @ np.hstack([hit, pred - hit, t - hit]).astype(np.float64)  # [G, 3C]
    tp, fp, fn = np.split(counts.T @ per_group, 3, axis=1)  # each [B, C]
    den = 2.0 * tp + fp + fn
    f1 = np.divide(2.0 * tp, den, out=np.zeros_like(tp), where=den > 0)

    auroc = np.column_stack([_grouped_auroc(t[:, j], p[:, j], codes, counts) for j in range(n_classes)])
    defined = np.isfinite(auroc)
    with np.errstate(invalid="ignore"):
        macro_auroc = np.where(defined.any(axis=1), np.nansum(auroc, axis=1) / defined.sum(axis=1), np.nan)

    return BootstrapResult(
        auroc_ci=np.array([_percentile_ci(auroc[:, j], confidence) for j in range(n_classes)]).reshape(n_classes, 2),
        f1_ci=np.array([_percentile_ci(f1[:, j], confidence) for j in range(n_classes)]).reshape(n_classes, 2),
        macro_auroc_ci=_percentile_ci(macro_auroc, confidence),
        macro_f1_ci=_percentile_ci(f1.mean(axis=1), confidence),
        n_resamples=int(n_resamples),
        n_groups=n_groups,
        confidence=confidence,
        n_auroc_defined=defined.sum(axis=0),
    )
