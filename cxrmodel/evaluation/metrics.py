"""Multi-label evaluation metrics over ``[N, C]`` label and probability arrays.

Pure functions in the style of :mod:`sklearn.metrics`: inputs are validated, every number
comes from scikit-learn where it has the metric, and results hold plain Python scalars so
they serialise to JSON or a database row unchanged. Column ``c`` is finding ``FINDINGS[c]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    f1_score,
    hamming_loss,
    label_ranking_average_precision_score,
    multilabel_confusion_matrix,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from cxrmodel.findings import FINDINGS

__all__ = [
    "EvaluationResult",
    "apply_thresholds",
    "epoch_summary",
    "evaluate_multilabel",
    "pr_curves",
    "roc_curves",
    "validate_multilabel",
]

AGGREGATE_KEYS: tuple[str, ...] = (
    "n_studies",
    "macro_auroc",
    "micro_auroc",
    "macro_f1",
    "micro_f1",
    "macro_precision",
    "micro_precision",
    "macro_recall",
    "micro_recall",
    "exact_match",
    "hamming_loss",
    "accuracy",
    "lrap",
    "mean_brier",
)
#: One class's curve: ``(x, y, score)``.
Curve = tuple[np.ndarray, np.ndarray, float]

PER_CLASS_KEYS: tuple[str, ...] = (
    "finding",
    "n_positive",
    "auroc",
    "pr_auc",
    "f1",
    "precision",
    "recall",
    "specificity",
    "npv",
    "brier",
    "threshold",
    "tp",
    "fp",
    "tn",
    "fn",
)


def validate_multilabel(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Check and convert a multi-label problem to ``(int64 [N, C] labels, float64 [N, C] probabilities)``.

    Raises ``ValueError`` unless both are 2-D with the same shape and ``N >= 1, C >= 1``,
    every label is 0 or 1, and every probability is a finite number in ``[0, 1]``.
    """
    t = np.asarray(y_true)
    p = np.asarray(y_prob)
    if t.ndim != 2 or p.ndim != 2:
        raise ValueError(f"y_true and y_prob must be 2-D [N, C]; got shapes {t.shape} and {p.shape}")
    if t.shape != p.shape:
        raise ValueError(f"y_true shape {t.shape} does not match y_prob shape {p.shape}")
    if t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"need at least one sample and one class; got shape {t.shape}")
    if t.dtype.kind not in "biuf":
        raise ValueError(f"y_true must be numeric 0/1; got dtype {t.dtype}")
    if p.dtype.kind not in "biuf":
        raise ValueError(f"y_prob must be numeric; got dtype {p.dtype}")
    if not np.isin(t, (0, 1)).all():  # NaN and 0.5 both fail here
        raise ValueError("y_true must contain only 0 and 1")
    p = p.astype(np.float64, copy=False)
    if not np.isfinite(p).all():
        raise ValueError("y_prob contains NaN or infinite values")
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(f"y_prob must lie in [0, 1]; got range [{p.min():.6g}, {p.max():.6g}]")
    return t.astype(np.int64), p


def _check_findings(findings: Sequence[str], n_classes: int) -> tuple[str, ...]:
    names = tuple(findings)
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} finding names for {n_classes} columns")
    return names


def _as_thresholds(thresholds: float | ArrayLike, n_classes: int) -> np.ndarray:
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.ndim == 0:
        thr = np.full(n_classes, float(thr))
    if thr.shape != (n_classes,):
        raise ValueError(f"thresholds must be a scalar or have shape ({n_classes},); got {thr.shape}")
    if not np.isfinite(thr).all() or thr.min() < 0.0 or thr.max() > 1.0:
        raise ValueError("thresholds must be finite and lie in [0, 1]")
    return thr


def apply_thresholds(y_prob: ArrayLike, thresholds: float | ArrayLike) -> np.ndarray:
    """Binary ``[N, C]`` int decisions ``y_prob >= thresholds`` (one threshold, or one per column)."""
    p = np.asarray(y_prob, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"y_prob must be 2-D [N, C]; got shape {p.shape}")
    return (p >= _as_thresholds(thresholds, p.shape[1])[None, :]).astype(np.int64)


def _has_both_labels(column: np.ndarray) -> bool:
    return bool(column.min() != column.max())


def _ratio(num: int, den: int) -> float:
    """``num / den`` with 0.0 for an empty denominator (scikit-learn's ``zero_division=0``)."""
    return float(num) / float(den) if den else 0.0


@dataclass(frozen=True)
class EvaluationResult:
    """Aggregate metrics (keys :data:`AGGREGATE_KEYS`) and one row per finding (keys :data:`PER_CLASS_KEYS`)."""

    aggregates: dict[str, float | None]
    per_class: list[dict] = field(default_factory=list)


def evaluate_multilabel(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    thresholds: float | ArrayLike,
    findings: Sequence[str] = FINDINGS,
) -> EvaluationResult:
    """Threshold ``y_prob`` per class (decision = ``prob >= threshold``) and compute every metric.

    AUROC and PR-AUC of a class whose labels are all 0 or all 1 are ``None``; ``macro_auroc``
    averages the defined per-class AUROCs (``None`` if there are none) and ``micro_auroc`` is
    ``None`` when the flattened labels hold a single value. Precision, recall, F1, specificity
    and NPV use ``zero_division=0``. ``accuracy`` is the mean per-label accuracy
    (``1 - hamming_loss``); ``exact_match`` is subset accuracy; ``lrap`` is ``None`` with fewer
    than two classes (there is no ranking to score).
    """
    t, p = validate_multilabel(y_true, y_prob)
    n, c = t.shape
    names = _check_findings(findings, c)
    thr = _as_thresholds(thresholds, c)
    pred = (p >= thr[None, :]).astype(np.int64)

    prf = {"zero_division": 0}
    prec_c = precision_score(t, pred, average=None, **prf)
    rec_c = recall_score(t, pred, average=None, **prf)
    f1_c = f1_score(t, pred, average=None, **prf)
    mcm = multilabel_confusion_matrix(t, pred)  # [C, 2, 2] = [[tn, fp], [fn, tp]]

    per_class: list[dict] = []
    for j, name in enumerate(names):
        (tn, fp), (fn, tp) = mcm[j].tolist()
        both = _has_both_labels(t[:, j])
        per_class.append(
            {
                "finding": name,
                "n_positive": int(t[:, j].sum()),
                "auroc": float(roc_auc_score(t[:, j], p[:, j])) if both else None,
                "pr_auc": float(average_precision_score(t[:, j], p[:, j])) if both else None,
                "f1": float(f1_c[j]),
                "precision": float(prec_c[j]),
                "recall": float(rec_c[j]),
                "specificity": _ratio(tn, tn + fp),
                "npv": _ratio(tn, tn + fn),
                "brier": float(brier_score_loss(t[:, j], p[:, j], pos_label=1)),
                "threshold": float(thr[j]),
                "tp": int(tp),
                "fp": int(fp),
                "tn": int(tn),
                "fn": int(fn),
            }
        )

    aurocs = [row["auroc"] for row in per_class if row["auroc"] is not None]
    ham = float(hamming_loss(t, pred))
    aggregates: dict[str, float | None] = {
        "n_studies": n,
        "macro_auroc": float(np.mean(aurocs)) if aurocs else None,
        "micro_auroc": float(roc_auc_score(t, p, average="micro")) if _has_both_labels(t) else None,
        "macro_f1": float(f1_score(t, pred, average="macro", **prf)),
        "micro_f1": float(f1_score(t, pred, average="micro", **prf)),
        "macro_precision": float(precision_score(t, pred, average="macro", **prf)),
        "micro_precision": float(precision_score(t, pred, average="micro", **prf)),
        "macro_recall": float(recall_score(t, pred, average="macro", **prf)),
        "micro_recall": float(recall_score(t, pred, average="micro", **prf)),
        "exact_match": float(accuracy_score(t, pred)),
        "hamming_loss": ham,
        "accuracy": 1.0 - ham,
        "lrap": float(label_ranking_average_precision_score(t, p)) if c >= 2 else None,
        "mean_brier": float(np.mean([row["brier"] for row in per_class])),
    }
    return EvaluationResult(aggregates=aggregates, per_class=per_class)


def epoch_summary(y_true: ArrayLike, y_prob: ArrayLike, thresholds: float | ArrayLike = 0.5) -> dict[str, float | None]:
    """Per-epoch validation summary: macro precision, recall and F1 at ``thresholds``, and macro AUROC.

    Returns ``{"mean_precision", "mean_recall", "macro_f1", "mean_auroc"}``; ``mean_auroc``
    averages the classes that have both label values and is ``None`` if none do.
    """
    t, p = validate_multilabel(y_true, y_prob)
    pred = (p >= _as_thresholds(thresholds, t.shape[1])[None, :]).astype(np.int64)
    aurocs = [roc_auc_score(t[:, j], p[:, j]) for j in range(t.shape[1]) if _has_both_labels(t[:, j])]
    return {
        "mean_precision": float(precision_score(t, pred, average="macro", zero_division=0)),
        "mean_recall": float(recall_score(t, pred, average="macro", zero_division=0)),
        "macro_f1": float(f1_score(t, pred, average="macro", zero_division=0)),
        "mean_auroc": float(np.mean(aurocs)) if aurocs else None,
    }


def _curves_per_class(y_true: ArrayLike, y_prob: ArrayLike, findings: Sequence[str], curve) -> dict[str, Curve]:
    """``finding -> curve(labels, probabilities)`` of the classes that hold both label values."""
    t, p = validate_multilabel(y_true, y_prob)
    names = _check_findings(findings, t.shape[1])
    return {name: curve(t[:, j], p[:, j]) for j, name in enumerate(names) if _has_both_labels(t[:, j])}


def _roc(t: np.ndarray, p: np.ndarray) -> Curve:
    fpr, tpr, _ = roc_curve(t, p)
    return fpr, tpr, float(roc_auc_score(t, p))


def _pr(t: np.ndarray, p: np.ndarray) -> Curve:
    precision, recall, _ = precision_recall_curve(t, p)
    return recall, precision, float(average_precision_score(t, p))


def roc_curves(y_true: ArrayLike, y_prob: ArrayLike, findings: Sequence[str] = FINDINGS) -> dict[str, Curve]:
    """``finding -> (fpr, tpr, auroc)`` from :func:`sklearn.metrics.roc_curve`, skipping single-label-value classes."""
    return _curves_per_class(y_true, y_prob, findings, _roc)


def pr_curves(y_true: ArrayLike, y_prob: ArrayLike, findings: Sequence[str] = FINDINGS) -> dict[str, Curve]:
    """``finding -> (recall, precision, average precision)``, skipping single-label-value classes.

    The curve is :func:`sklearn.metrics.precision_recall_curve`'s (recall decreasing, ending at
    recall 0 and precision 1) and the score :func:`sklearn.metrics.average_precision_score`, the
    step-wise area that the per-class ``pr_auc`` of :func:`evaluate_multilabel` reports.
    Recall comes first so that, like :func:`roc_curves`, each entry reads ``(x, y, score)``.
    """
    return _curves_per_class(y_true, y_prob, findings, _pr)
