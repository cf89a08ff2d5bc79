"""Patient-grouped cross-validation of any candidate that can fit and predict.

A candidate is a ``fit_predict(train_index, test_index) -> probabilities`` callable: it trains
on the rows of ``train_index`` and returns ``(len(test_index), n_findings)`` probabilities for
the rows of ``test_index``. Folds come from :func:`cxrmodel.data.splits.patient_folds`, so
no patient is on both sides of a fold. Each fold is scored by the macro AUROC over the
findings that fold's held-out part can rank (at least ``min_positives`` positives and one
negative); on small real sets most rare findings cannot be ranked and averaging them in
would only add noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score

from cxrmodel.evaluation.metrics import validate_multilabel
from cxrmodel.findings import FINDINGS

FitPredict = Callable[[np.ndarray, np.ndarray], np.ndarray]


def supported_macro_auroc(
    y_true: ArrayLike, y_prob: ArrayLike, min_positives: int = 5, findings: Sequence[str] = FINDINGS
) -> tuple[float | None, tuple[str, ...]]:
    """Mean AUROC over the findings with at least ``min_positives`` positives and one negative.

    Returns ``(macro_auroc, findings_used)``; ``macro_auroc`` is ``None`` when no finding qualifies.
    """
    if min_positives < 1:
        raise ValueError(f"min_positives must be at least 1, got {min_positives}")
    t, p = validate_multilabel(y_true, y_prob)
    if t.shape[1] != len(findings):
        raise ValueError(f"{t.shape[1]} label columns but {len(findings)} findings")
    positives = t.sum(axis=0)
    used = [j for j in range(t.shape[1]) if positives[j] >= min_positives and positives[j] < len(t)]
    if not used:
        return None, ()
    scores = [roc_auc_score(t[:, j], p[:, j]) for j in used]
    return float(np.mean(scores)), tuple(findings[j] for j in used)


@dataclass(frozen=True)
class CrossValidationResult:
    """Per-fold macro AUROC of one candidate and its out-of-fold probabilities."""

    fold_scores: tuple[float | None, ...]
    fold_findings: tuple[tuple[str, ...], ...]
    out_of_fold: np.ndarray

    @property
    def scored(self) -> np.ndarray:
        return np.array([s for s in self.fold_scores if s is not None], dtype=float)

    @property
    def mean(self) -> float | None:
        return float(self.scored.mean()) if self.scored.size else None

    @property
    def std(self) -> float | None:
        return float(self.scored.std(ddof=1)) if self.scored.size > 1 else None


def cross_validate(fit_predict: FitPredict, labels: ArrayLike, folds: ArrayLike, min_positives: int = 5) -> CrossValidationResult:
    """Run ``fit_predict`` once per fold and score each held-out part.

    ``labels``: ``(n, n_findings)`` 0/1; ``folds``: ``(n,)`` fold index per row, as returned by
    :func:`~cxrmodel.data.splits.patient_folds`.
    """
    y = np.asarray(labels)
    fold_of = np.asarray(folds)
    if y.ndim != 2 or fold_of.shape != (len(y),):
        raise ValueError(f"labels {y.shape} and folds {fold_of.shape} do not match")
    out = np.full(y.shape, np.nan, dtype=np.float64)
    scores: list[float | None] = []
    used: list[tuple[str, ...]] = []
    for fold in np.unique(fold_of):
        test_index = np.flatnonzero(fold_of == fold)
        train_index = np.flatnonzero(fold_of != fold)
        probs = np.asarray(fit_predict(train_index, test_index), dtype=np.float64)
        if probs.shape != (len(test_index), y.shape[1]):
            raise ValueError(f"fold {fold}: fit_predict returned {probs.shape}, expected {(len(test_index), y.shape[1])}")
        out[test_index] = probs
        score, findings = supported_macro_auroc(y[test_index], probs, min_positives)
        scores.append(score)
        used.append(findings)
    return CrossValidationResult(tuple(scores), tuple(used), out)


def paired_difference(candidate: CrossValidationResult, reference: CrossValidationResult) -> tuple[float, float | None]:
    """Mean and standard deviation over folds of ``candidate - reference`` macro AUROC.

    Both must come from the same folds; folds either one could not score are left out.
    """
    if len(candidate.fold_scores) != len(reference.fold_scores):
        raise ValueError("candidate and reference were cross-validated on different folds")
    diffs = np.array(
        [a - b for a, b in zip(candidate.fold_scores, reference.fold_scores, strict=True) if a is not None and b is not None]
    )
    if not diffs.size:
        raise ValueError("no fold was scored for both candidate and reference")
    return float(diffs.mean()), (float(diffs.std(ddof=1)) if diffs.size > 1 else None)
