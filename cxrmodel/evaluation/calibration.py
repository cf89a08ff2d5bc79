"""Probability calibration: expected calibration error, reliability curves, and per-class
temperature or Platt scaling fitted on validation predictions.

Bins are equal-width on ``[0, 1]`` and follow :func:`sklearn.calibration.calibration_curve`
(``strategy="uniform"``): a probability on an inner bin edge falls in the lower bin, 0 in the
first bin and 1 in the last. Both scalings act on ``logit(p)`` with ``p`` clipped to
``[1e-7, 1 - 1e-7]`` and are increasing maps, so per-class rankings (and AUROC) are unchanged.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss
from threadpoolctl import threadpool_limits

from cxrmodel.evaluation.metrics import _check_findings, validate_multilabel
from cxrmodel.findings import FINDINGS

__all__ = [
    "CALIBRATION_METHODS",
    "ProbabilityCalibrator",
    "calibration_summary",
    "expected_calibration_error",
    "reliability_curve",
]

CALIBRATION_METHODS: tuple[str, ...] = ("temperature", "platt")
PROB_CLIP = 1e-7
# Temperatures searched by the bounded 1-D minimisation (over log T).
TEMPERATURE_BOUNDS: tuple[float, float] = (1e-2, 1e2)
PLATT_C = 1e6  # inverse L2 strength of the Platt regression: effectively none


def _binary(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    if np.ndim(y_true) != 1 or np.ndim(y_prob) != 1:
        raise ValueError(f"y_true and y_prob must be 1-D; got shapes {np.shape(y_true)} and {np.shape(y_prob)}")
    t, p = validate_multilabel(np.asarray(y_true)[:, None], np.asarray(y_prob)[:, None])
    return t[:, 0], p[:, 0]


def _bin_sums(t: np.ndarray, p: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: study count, sum of probabilities, sum of labels (``[n_bins]`` each)."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1; got {n_bins!r}")
    ids = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], p)
    count = np.bincount(ids, minlength=n_bins)
    return count, np.bincount(ids, weights=p, minlength=n_bins), np.bincount(ids, weights=t, minlength=n_bins)


def expected_calibration_error(y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 15) -> float:
    """Expected calibration error of one binary problem over ``n_bins`` equal-width bins.

    ``sum over bins of (n_bin / N) * |fraction of positives in bin - mean probability in bin|``;
    empty bins add nothing. 0 for perfectly calibrated bins, at most 1.
    """
    t, p = _binary(y_true, y_prob)
    _, sum_p, sum_t = _bin_sums(t, p, n_bins)
    return float(np.abs(sum_t - sum_p).sum() / t.size)


def reliability_curve(y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean predicted probability, observed fraction of positives, study count)`` per non-empty
    equal-width bin, in bin order; the first two are ``calibration_curve``'s ``prob_pred`` and
    ``prob_true`` with ``strategy="uniform"``."""
    t, p = _binary(y_true, y_prob)
    count, sum_p, sum_t = _bin_sums(t, p, n_bins)
    full = count > 0
    return sum_p[full] / count[full], sum_t[full] / count[full], count[full]


def _logits(p: np.ndarray) -> np.ndarray:
    return logit(np.clip(p, PROB_CLIP, 1.0 - PROB_CLIP))


def _fit_temperature(t: np.ndarray, z: np.ndarray) -> tuple[float, bool]:
    """Temperature minimising the mean log loss of ``sigmoid(z / T)``; and whether it hit a bound."""
    sign = np.where(t == 1, -1.0, 1.0)

    def log_loss(log_temp: float) -> float:
        return float(np.logaddexp(0.0, sign * z * math.exp(-log_temp)).mean())

    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    res = minimize_scalar(log_loss, bounds=(low, high), method="bounded", options={"xatol": 1e-7})
    at_bound = min(res.x - low, high - res.x) < 1e-3
    return float(math.exp(res.x)), bool(at_bound)


def _fit_platt(t: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of an effectively unpenalised logistic regression of the labels on
    ``z`` (``C = 1e6`` keeps the slope finite when the classes are separable; the tight
    tolerance matters: the default one leaves intercepts of rare classes off by ~0.03)."""
    model = LogisticRegression(C=PLATT_C, tol=1e-8, max_iter=1000).fit(z[:, None], t)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def _fit_one(method: str, t: np.ndarray, z: np.ndarray) -> tuple[float, float, float, str | None]:
    """``(temperature, slope, intercept, note or None)`` of one class; identity where it cannot be fitted."""
    n_pos = int(t.sum())
    if n_pos in (0, t.size):
        return 1.0, 1.0, 0.0, f"single label value in the fitting data (all {1 if n_pos else 0}): identity"
    if method == "temperature":
        temp, at_bound = _fit_temperature(t, z)
        return temp, 1.0, 0.0, f"temperature {temp:.4g} at the search bound {TEMPERATURE_BOUNDS}" if at_bound else None
    a, b = _fit_platt(t, z)
    if a <= 0:
        return 1.0, 1.0, 0.0, f"Platt slope {a:.4g} <= 0 (scores anti-correlated with labels): identity"
    return 1.0, a, b, None


def _check_probabilities(y_prob: ArrayLike, n_classes: int) -> np.ndarray:
    p = np.asarray(y_prob, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise ValueError(f"y_prob must have shape [N, {n_classes}]; got {p.shape}")
    if not np.isfinite(p).all() or (p.size and (p.min() < 0.0 or p.max() > 1.0)):
        raise ValueError("y_prob must be finite and lie in [0, 1]")
    return p


@dataclass(frozen=True, eq=False)
class ProbabilityCalibrator:
    """Per-class map ``p -> sigmoid(f(logit(p)))`` fitted on validation predictions.

    ``"temperature"``: ``f(z) = z / temperature[c]``; ``"platt"``: ``f(z) = slope[c] * z +
    intercept[c]``. Parameters of the other method stay at identity. ``notes`` says, per
    finding, why a class was left at identity (or hit a search bound). ``not_applied``: the
    findings whose fitted map made the ECE on the fitting (validation) data worse, with
    ``(ece_before, ece_after)``; they keep identity, so the calibration never worsens a finding.
    """

    method: str
    findings: tuple[str, ...]
    temperature: np.ndarray
    slope: np.ndarray
    intercept: np.ndarray
    notes: dict[str, str] = field(default_factory=dict)
    not_applied: dict[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        y_true: ArrayLike,
        y_prob: ArrayLike,
        method: Literal["temperature", "platt"],
        findings: Sequence[str] = FINDINGS,
        n_bins: int = 15,
        keep_if_worse: bool = False,
    ) -> ProbabilityCalibrator:
        """Fit one calibration per column of ``y_prob`` ``[N, C]`` against ``y_true`` ``[N, C]``.

        Temperature: ``T`` in ``[0.01, 100]`` minimising the log loss (bounded search over
        ``log T``). Platt: :class:`~sklearn.linear_model.LogisticRegression` on ``logit(p)``
        with ``C = 1e6`` (effectively unpenalised). A class with a single label value keeps
        identity (``T = 1``; slope 1, intercept 0), as does a Platt fit whose slope is not
        positive (it would reverse the ranking); both leave a note. A fitted map that makes the
        class's ECE (``n_bins`` bins) on the fitting data worse is not applied (identity, listed
        in :attr:`not_applied` with a note) unless ``keep_if_worse``.
        """
        if method not in CALIBRATION_METHODS:
            raise ValueError(f"method must be one of {CALIBRATION_METHODS}; got {method!r}")
        t, p = validate_multilabel(y_true, y_prob)
        names = _check_findings(findings, t.shape[1])
        z = _logits(p)
        n_classes = t.shape[1]
        temperature, slope, intercept = np.ones(n_classes), np.ones(n_classes), np.zeros(n_classes)
        notes: dict[str, str] = {}
        # One feature: thread pools only add start-up and, on busy cores, spin-waiting (10x slower).
        with threadpool_limits(limits=1):
            for j, name in enumerate(names):
                temperature[j], slope[j], intercept[j], note = _fit_one(method, t[:, j], z[:, j])
                if note:
                    notes[name] = note
        fitted = cls(method, names, temperature, slope, intercept, notes)
        if keep_if_worse:
            return fitted
        after = fitted.transform(p)
        for j, name in enumerate(names):
            before_ece = expected_calibration_error(t[:, j], p[:, j], n_bins)
            after_ece = expected_calibration_error(t[:, j], after[:, j], n_bins)
            if after_ece > before_ece + 1e-12:
                temperature[j], slope[j], intercept[j] = 1.0, 1.0, 0.0
                fitted.not_applied[name] = (before_ece, after_ece)
                notes[name] = (
                    f"{method} scaling made the ECE on validation worse ({before_ece:.4f} -> {after_ece:.4f}): not applied"
                )
        return fitted

    def transform(self, y_prob: ArrayLike) -> np.ndarray:
        """Calibrated probabilities ``[N, C]`` (float64) for ``y_prob`` ``[N, C]``."""
        z = _logits(_check_probabilities(y_prob, len(self.findings)))
        if self.method == "temperature":
            return expit(z / self.temperature[None, :])
        return expit(z * self.slope[None, :] + self.intercept[None, :])

    def to_dict(self) -> dict:
        """JSON-able ``{"method", "parameters": {finding: {...}}, "notes", "not_applied"}``; temperature scaling
        stores ``{"temperature": T}`` per finding, Platt ``{"slope": a, "intercept": b}``."""
        if self.method == "temperature":
            params = {name: {"temperature": float(v)} for name, v in zip(self.findings, self.temperature, strict=True)}
        else:
            params = {
                name: {"slope": float(a), "intercept": float(b)}
                for name, a, b in zip(self.findings, self.slope, self.intercept, strict=True)
            }
        not_applied = {name: {"ece_before": float(b), "ece_after": float(a)} for name, (b, a) in self.not_applied.items()}
        return {"method": self.method, "parameters": params, "notes": dict(self.notes), "not_applied": not_applied}

    @classmethod
    def from_dict(cls, data: Mapping) -> ProbabilityCalibrator:
        """Rebuild a calibrator from :meth:`to_dict` output (finding order as stored)."""
        method = data.get("method") if isinstance(data, Mapping) else None
        if method not in CALIBRATION_METHODS:
            raise ValueError(f"not a calibrator: method must be one of {CALIBRATION_METHODS}; got {method!r}")
        params = data.get("parameters")
        if not isinstance(params, Mapping) or not params:
            raise ValueError("calibrator dict needs a non-empty 'parameters' mapping")
        keys = ("temperature",) if method == "temperature" else ("slope", "intercept")
        values = {key: [] for key in keys}
        for name, row in params.items():
            for key in keys:
                v = row.get(key) if isinstance(row, Mapping) else None
                if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                    raise ValueError(f"{name}: {key} must be a finite number; got {v!r}")
                values[key].append(float(v))
        n_classes = len(params)
        temperature = np.asarray(values.get("temperature", np.ones(n_classes)), dtype=np.float64)
        if (temperature <= 0).any():
            raise ValueError("temperatures must be positive")
        return cls(
            method,
            tuple(params),
            temperature,
            np.asarray(values.get("slope", np.ones(n_classes)), dtype=np.float64),
            np.asarray(values.get("intercept", np.zeros(n_classes)), dtype=np.float64),
            dict(data.get("notes") or {}),
            {name: (float(row["ece_before"]), float(row["ece_after"])) for name, row in (data.get("not_applied") or {}).items()},
        )


def calibration_summary(
    y_true: ArrayLike,
    y_prob_before: ArrayLike,
    y_prob_after: ArrayLike,
    findings: Sequence[str] = FINDINGS,
    n_bins: int = 15,
) -> list[dict]:
    """One row per finding: ``{finding, brier_before, brier_after, ece_before, ece_after}``
    (Brier from :func:`sklearn.metrics.brier_score_loss`, ECE over ``n_bins`` bins)."""
    t, before = validate_multilabel(y_true, y_prob_before)
    _, after = validate_multilabel(t, y_prob_after)
    names = _check_findings(findings, t.shape[1])
    rows = []
    for j, name in enumerate(names):
        rows.append(
            {
                "finding": name,
                "brier_before": float(brier_score_loss(t[:, j], before[:, j], pos_label=1)),
                "brier_after": float(brier_score_loss(t[:, j], after[:, j], pos_label=1)),
                "ece_before": expected_calibration_error(t[:, j], before[:, j], n_bins),
                "ece_after": expected_calibration_error(t[:, j], after[:, j], n_bins),
            }
        )
    return rows
