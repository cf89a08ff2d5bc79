"""Metrics restricted to subgroups of the studies (sex, age band, view position) and the gap
between the best and the worst group, to see whether the model serves some patients worse."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from cxrmodel.evaluation.calibration import expected_calibration_error
from cxrmodel.evaluation.metrics import _check_findings, evaluate_multilabel, validate_multilabel
from cxrmodel.findings import FINDINGS

__all__ = ["AGE_BANDS", "SUBGROUP_KEYS", "UNKNOWN", "age_band", "subgroup_gaps", "subgroup_metrics"]

AGE_BANDS: tuple[str, ...] = ("0-19", "20-39", "40-59", "60-79", "80+")
_AGE_EDGES = np.array([20.0, 40.0, 60.0, 80.0])  # lower bounds of every band but the first
UNKNOWN = "unknown"
SUBGROUP_KEYS: tuple[str, ...] = (
    "attribute",
    "group",
    "n_studies",
    "n_positive_labels",
    "macro_auroc",
    "macro_f1",
    "micro_f1",
    "exact_match",
    "hamming_loss",
    "mean_brier",
    "mean_ece",
)
_METRIC_KEYS = SUBGROUP_KEYS[4:]


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def age_band(ages: ArrayLike) -> np.ndarray:
    """Age band label per age (object array): ``"0-19"``, ``"20-39"``, ``"40-59"``, ``"60-79"``,
    ``"80+"``; ``"unknown"`` for None or NaN. A band holds ages ``>=`` its lower bound, so 19.5
    is ``"0-19"`` and 20 is ``"20-39"``. Raises ``ValueError`` for negative or infinite ages."""
    raw = np.asarray(ages, dtype=object)
    if raw.ndim != 1:
        raise ValueError(f"ages must be 1-D; got shape {raw.shape}")
    values = np.array([math.nan if _is_missing(v) else v for v in raw.tolist()], dtype=np.float64)
    known = ~np.isnan(values)
    if np.isinf(values).any() or (values[known] < 0).any():
        raise ValueError("ages must be finite and non-negative (None/NaN for unknown)")
    bands = np.full(values.shape, UNKNOWN, dtype=object)
    bands[known] = np.asarray(AGE_BANDS, dtype=object)[np.searchsorted(_AGE_EDGES, values[known], side="right")]
    return bands


def _group_labels(values: ArrayLike, n: int, name: str) -> tuple[np.ndarray, list]:
    """Per-study group values (missing -> ``"unknown"``, numpy scalars -> Python) and the sorted
    distinct values, ``"unknown"`` last."""
    raw = np.asarray(values, dtype=object)
    if raw.shape != (n,):
        raise ValueError(f"attribute {name!r} must have shape ({n},); got {raw.shape}")
    labels = np.array(
        [UNKNOWN if _is_missing(v) else v.item() if isinstance(v, np.generic) else v for v in raw.tolist()],
        dtype=object,
    )
    distinct = set(labels.tolist())
    known = distinct - {UNKNOWN}
    try:
        order = sorted(known)
    except TypeError:  # mixed types: compare as text
        order = sorted(known, key=str)
    return labels, order + ([UNKNOWN] if UNKNOWN in distinct else [])


def subgroup_metrics(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    thresholds: float | ArrayLike,
    attributes: Mapping[str, ArrayLike],
    findings: Sequence[str] = FINDINGS,
    min_studies: int = 1,
    n_bins: int = 15,
) -> list[dict]:
    """One row per (attribute, group): :data:`SUBGROUP_KEYS` computed on that group's studies.

    ``attributes`` maps a name (``"sex"``, ``"age_band"``, ``"view"``...) to one value per
    study; None/NaN become ``"unknown"``. Groups come in sorted order (``"unknown"`` last).
    The metrics are :func:`cxrmodel.evaluation.metrics.evaluate_multilabel`'s on the subset
    (``macro_auroc`` averages the classes with both label values there, ``None`` if none) and
    ``mean_ece``, the mean over classes of :func:`expected_calibration_error` with ``n_bins``
    bins. A group with fewer than ``min_studies`` studies is listed with its ``n_studies`` and
    ``n_positive_labels`` and every metric ``None``.
    """
    t, p = validate_multilabel(y_true, y_prob)
    names = _check_findings(findings, t.shape[1])
    if isinstance(min_studies, bool) or not isinstance(min_studies, numbers.Integral) or min_studies < 1:
        raise ValueError(f"min_studies must be an integer >= 1; got {min_studies!r}")
    labelled = {name: _group_labels(values, t.shape[0], name) for name, values in attributes.items()}
    rows: list[dict] = []
    for attribute, (labels, order) in labelled.items():
        for group in order:
            mask = labels == group
            sub_t, sub_p = t[mask], p[mask]
            row = {"attribute": attribute, "group": group, "n_studies": int(mask.sum()), "n_positive_labels": int(sub_t.sum())}
            if row["n_studies"] < min_studies:
                row.update(dict.fromkeys(_METRIC_KEYS))
            else:
                agg = evaluate_multilabel(sub_t, sub_p, thresholds, names).aggregates
                row.update({key: agg[key] for key in _METRIC_KEYS[:-1]})
                eces = [expected_calibration_error(sub_t[:, j], sub_p[:, j], n_bins) for j in range(t.shape[1])]
                row["mean_ece"] = float(np.mean(eces))
            rows.append(row)
    return rows


def subgroup_gaps(rows: Sequence[Mapping], metric: str = "macro_auroc") -> dict[str, float | None]:
    """Per attribute (in first-seen order), the largest minus the smallest ``metric`` over its
    groups that have a value; ``None`` when no group has one (0.0 with a single such group)."""
    if metric not in _METRIC_KEYS:
        raise ValueError(f"metric must be one of {_METRIC_KEYS}; got {metric!r}")
    values: dict[str, list[float]] = {}
    for row in rows:
        bucket = values.setdefault(row["attribute"], [])
        if row.get(metric) is not None:
            bucket.append(float(row[metric]))
    return {name: (max(v) - min(v)) if v else None for name, v in values.items()}
