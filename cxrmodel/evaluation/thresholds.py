"""Per-finding decision thresholds calibrated on validation predictions.

The three methods of the seed report (Youden's J, precision-constrained F1 over a grid,
and the "dynamic" variant that lowers the threshold of weak classes) plus a
fixed-sensitivity operating point. Every method returns a :class:`ThresholdResult`; a
class whose validation labels are all 0 or all 1 cannot be calibrated and gets 0.5 with a
note. Decisions everywhere are ``prob >= threshold``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import roc_curve

from cxrmodel.config import ThresholdConfig
from cxrmodel.evaluation.metrics import validate_multilabel
from cxrmodel.findings import FINDINGS

__all__ = [
    "DEFAULT_THRESHOLD",
    "ThresholdResult",
    "calibrate_thresholds",
    "dynamic_f1_thresholds",
    "fixed_sensitivity_thresholds",
    "load_thresholds_json",
    "precision_constrained_f1_thresholds",
    "save_thresholds_json",
    "threshold_grid",
    "youden_thresholds",
]

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True, eq=False)
class ThresholdResult:
    """Thresholds ``[C]`` from one method, warnings per finding, and F1 ``[C]`` at each threshold
    on the calibration data (NaN for classes that could not be calibrated)."""

    thresholds: np.ndarray
    method: str
    notes: dict[str, str] = field(default_factory=dict)
    best_f1: np.ndarray = field(default_factory=lambda: np.empty(0))

    def as_dict(self, findings: Sequence[str] = FINDINGS) -> dict[str, float]:
        """``finding -> threshold`` as plain floats."""
        names = _check_findings(findings, len(self.thresholds))
        return {name: float(v) for name, v in zip(names, self.thresholds, strict=True)}


# --------------------------------------------------------------------------- helpers


def _check_findings(findings: Sequence[str], n_classes: int) -> tuple[str, ...]:
    names = tuple(findings)
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} finding names for {n_classes} columns")
    return names


def _check_unit(name: str, value: float, *, low_open: bool = False) -> float:
    value = float(value)
    if not math.isfinite(value) or value > 1.0 or value < 0.0 or (low_open and value == 0.0):
        raise ValueError(f"{name} must lie in {'(0' if low_open else '[0'}, 1]; got {value}")
    return value


def threshold_grid(start: float = 0.10, stop: float = 0.85, step: float = 0.05) -> np.ndarray:
    """Grid ``start, start + step, ..., stop`` (inclusive), rounded to 6 decimals, within ``[0, 1]``.

    The default is the seed report's 16 values ``0.10, 0.15, ..., 0.85``.
    """
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"grid step must be positive; got {step}")
    if not (0.0 <= start <= stop <= 1.0):
        raise ValueError(f"need 0 <= grid start <= grid stop <= 1; got {start}, {stop}")
    return np.round(np.arange(start, stop + 1e-9, step), 6)


def _check_grid(grid: ArrayLike | None) -> np.ndarray:
    if grid is None:
        return threshold_grid()
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 1 or g.size == 0:
        raise ValueError(f"grid must be a non-empty 1-D array; got shape {g.shape}")
    if not np.isfinite(g).all() or g.min() < 0.0 or g.max() > 1.0:
        raise ValueError("grid values must be finite and lie in [0, 1]")
    return np.unique(g)  # sorted ascending: argmax then breaks F1 ties towards the lowest threshold


def _confusion_counts(
    y_true: np.ndarray, y_prob: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``tp, fp, fn`` as ``[G, C]`` int arrays for thresholds ``[G]`` (shared) or ``[G, C]`` (per class)."""
    thr = thresholds[:, None] if thresholds.ndim == 1 else thresholds
    pred = y_prob[None, :, :] >= thr[:, None, :]  # [G, N, C]
    n_pred = pred.sum(axis=1)
    tp = (pred & (y_true == 1)[None, :, :]).sum(axis=1)
    return tp, n_pred - tp, y_true.sum(axis=0)[None, :] - tp


def _precision_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and F1 with ``zero_division=0``, each one exact division as in scikit-learn."""
    tp_f = tp.astype(np.float64)
    den_p = (tp + fp).astype(np.float64)
    den_f = (2 * tp + fp + fn).astype(np.float64)
    precision = np.divide(tp_f, den_p, out=np.zeros_like(tp_f), where=den_p > 0)
    f1 = np.divide(2 * tp_f, den_f, out=np.zeros_like(tp_f), where=den_f > 0)
    return precision, f1


def _f1_at(y_true: np.ndarray, y_prob: np.ndarray, thresholds: np.ndarray, calibrated: np.ndarray) -> np.ndarray:
    _, f1 = _precision_f1(*_confusion_counts(y_true, y_prob, thresholds[None, :]))
    return np.where(calibrated, f1[0], np.nan)


def _single_value_classes(y_true: np.ndarray, names: tuple[str, ...], notes: dict[str, str]) -> np.ndarray:
    """Boolean ``[C]`` mask of calibratable classes; notes the others."""
    n_pos = y_true.sum(axis=0)
    calibrated = (n_pos > 0) & (n_pos < y_true.shape[0])
    for j in np.flatnonzero(~calibrated):
        value = 1 if n_pos[j] else 0
        notes[names[j]] = f"single label value in validation (all {value}): default {DEFAULT_THRESHOLD}"
    return calibrated


def _add_note(notes: dict[str, str], name: str, text: str) -> None:
    notes[name] = f"{notes[name]}; {text}" if name in notes else text


def _prepare(y_true: ArrayLike, y_prob: ArrayLike, findings: Sequence[str]):
    t, p = validate_multilabel(y_true, y_prob)
    names = _check_findings(findings, t.shape[1])
    notes: dict[str, str] = {}
    return t, p, names, notes, _single_value_classes(t, names, notes)


# --------------------------------------------------------------------------- methods


def youden_thresholds(y_true: ArrayLike, y_prob: ArrayLike, findings: Sequence[str] = FINDINGS) -> ThresholdResult:
    """Per class, the ROC threshold maximising Youden's ``J = tpr - fpr`` (ties: the highest threshold).

    ``roc_curve``'s leading ``inf`` threshold is clipped to 1.0. A class whose labels are all
    0 or all 1 gets 0.5 and a note.
    """
    t, p, names, notes, calibrated = _prepare(y_true, y_prob, findings)
    thr = np.full(t.shape[1], DEFAULT_THRESHOLD)
    for j in np.flatnonzero(calibrated):
        fpr, tpr, cut = roc_curve(t[:, j], p[:, j], drop_intermediate=False)
        j_stat = tpr - fpr
        best = int(np.flatnonzero(j_stat >= j_stat.max() - 1e-12)[0])  # float-robust tie -> highest threshold
        thr[j] = float(np.clip(cut[best], 0.0, 1.0))
        if j_stat[best] <= 1e-12:
            _add_note(notes, names[j], "no threshold beats chance (Youden J <= 0)")
    return ThresholdResult(thr, "youden", notes, _f1_at(t, p, thr, calibrated))


def _constrained_f1(
    t: np.ndarray,
    p: np.ndarray,
    names: tuple[str, ...],
    notes: dict[str, str],
    calibrated: np.ndarray,
    min_precision: float,
    grid: ArrayLike | None,
) -> np.ndarray:
    """Grid threshold with the highest F1 among those with precision >= ``min_precision``."""
    min_precision = _check_unit("min_precision", min_precision)
    g = _check_grid(grid)
    precision, f1 = _precision_f1(*_confusion_counts(t, p, g))  # [G, C]
    allowed = precision >= min_precision
    best = np.argmax(np.where(allowed, f1, -np.inf), axis=0)  # first max = lowest threshold
    found = allowed.any(axis=0)
    thr = np.where(found & calibrated, g[best], DEFAULT_THRESHOLD)
    for j in np.flatnonzero(calibrated & ~found):
        text = f"no grid threshold reaches precision {min_precision:.2f}: default {DEFAULT_THRESHOLD}"
        _add_note(notes, names[j], text)
    return thr


def precision_constrained_f1_thresholds(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    min_precision: float = 0.40,
    grid: ArrayLike | None = None,
    findings: Sequence[str] = FINDINGS,
) -> ThresholdResult:
    """Per class, the grid threshold with the best F1 subject to precision >= ``min_precision``.

    F1 ties go to the lowest threshold. Default grid: ``0.10, 0.15, ..., 0.85``. A class with
    no grid value meeting the constraint, or with a single label value, gets 0.5 and a note.
    """
    t, p, names, notes, calibrated = _prepare(y_true, y_prob, findings)
    thr = _constrained_f1(t, p, names, notes, calibrated, min_precision, grid)
    return ThresholdResult(thr, "precision_constrained_f1", notes, _f1_at(t, p, thr, calibrated))


def dynamic_f1_thresholds(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    min_precision: float = 0.40,
    grid: ArrayLike | None = None,
    low_f1: float = 0.30,
    adjustment: float = 0.05,
    findings: Sequence[str] = FINDINGS,
) -> ThresholdResult:
    """:func:`precision_constrained_f1_thresholds`, then weak classes get a lower threshold.

    Every calibratable class whose F1 at its chosen threshold (grid choice or the 0.5
    fallback) is below ``low_f1`` has its threshold lowered by ``adjustment`` (floored at
    0.0, rounded to 4 decimals) and a note. ``best_f1`` is F1 at the final threshold.
    """
    low_f1 = _check_unit("low_f1", low_f1)
    if not (math.isfinite(adjustment) and 0.0 <= adjustment <= 1.0):
        raise ValueError(f"adjustment must lie in [0, 1]; got {adjustment}")
    t, p, names, notes, calibrated = _prepare(y_true, y_prob, findings)
    thr = _constrained_f1(t, p, names, notes, calibrated, min_precision, grid)
    f1 = _f1_at(t, p, thr, calibrated)
    weak = calibrated & (f1 < low_f1)
    for j in np.flatnonzero(weak):
        new = round(max(float(thr[j]) - adjustment, 0.0), 4)
        _add_note(notes, names[j], f"F1 {f1[j]:.3f} < {low_f1:.2f}: threshold lowered {thr[j]:.4g} -> {new:.4g}")
        thr[j] = new
    return ThresholdResult(thr, "dynamic_f1", notes, _f1_at(t, p, thr, calibrated))


def fixed_sensitivity_thresholds(
    y_true: ArrayLike, y_prob: ArrayLike, min_sensitivity: float = 0.90, findings: Sequence[str] = FINDINGS
) -> ThresholdResult:
    """Per class, the highest ROC threshold whose sensitivity (recall) is >= ``min_sensitivity``.

    A class whose labels are all 0 or all 1 gets 0.5 and a note.
    """
    min_sensitivity = _check_unit("min_sensitivity", min_sensitivity, low_open=True)
    t, p, names, notes, calibrated = _prepare(y_true, y_prob, findings)
    thr = np.full(t.shape[1], DEFAULT_THRESHOLD)
    for j in np.flatnonzero(calibrated):
        _, tpr, cut = roc_curve(t[:, j], p[:, j], drop_intermediate=False)
        first = int(np.argmax(tpr >= min_sensitivity))  # tpr ascends as thresholds descend; tpr[-1] == 1
        thr[j] = float(np.clip(cut[first], 0.0, 1.0))
    return ThresholdResult(thr, "fixed_sensitivity", notes, _f1_at(t, p, thr, calibrated))


def calibrate_thresholds(y_true: ArrayLike, y_prob: ArrayLike, config: ThresholdConfig) -> ThresholdResult:
    """Run the method named by ``config.method`` with the config's precision floor, grid and F1 rule."""
    if config.method == "youden":
        return youden_thresholds(y_true, y_prob)
    if config.method == "fixed_sensitivity":
        return fixed_sensitivity_thresholds(y_true, y_prob, config.min_sensitivity)
    grid = threshold_grid(config.grid_start, config.grid_stop, config.grid_step)
    if config.method == "precision_constrained_f1":
        return precision_constrained_f1_thresholds(y_true, y_prob, config.min_precision, grid)
    if config.method == "dynamic_f1":
        return dynamic_f1_thresholds(
            y_true, y_prob, config.min_precision, grid, low_f1=config.low_f1, adjustment=config.adjustment
        )
    raise ValueError(f"unknown threshold method {config.method!r}")


# --------------------------------------------------------------------------- persistence


def save_thresholds_json(result: ThresholdResult, path: str | Path, findings: Sequence[str] = FINDINGS) -> Path:
    """Write ``{"method", "thresholds": {finding: value}, "notes": {finding: text}}`` as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"method": result.method, "thresholds": result.as_dict(findings), "notes": dict(result.notes)}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def load_thresholds_json(path: str | Path, findings: Sequence[str] = FINDINGS) -> np.ndarray:
    """Thresholds ``[C]`` in ``findings`` order from a file written by :func:`save_thresholds_json`.

    Raises ``ValueError`` for a missing or unknown finding, or a value that is not a number in ``[0, 1]``.
    """
    names = tuple(findings)
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    table = data.get("thresholds") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected an object with a 'thresholds' mapping")
    unknown = sorted(set(table) - set(names))
    missing = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"{path}: unknown finding(s) {unknown}")
    if missing:
        raise ValueError(f"{path}: missing threshold(s) for {missing}")
    values = []
    for name in names:
        v = table[name]
        if isinstance(v, bool) or not isinstance(v, int | float) or not (0.0 <= float(v) <= 1.0):
            raise ValueError(f"{path}: threshold for {name} must be a number in [0, 1]; got {v!r}")
        values.append(float(v))
    return np.asarray(values, dtype=np.float64)
