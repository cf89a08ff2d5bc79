"""Threshold calibration speed on a validation split of realistic size: 25,000 studies x 14
findings at NIH ChestX-ray14 prevalences (0.2 % Hernia to 17.7 % Infiltration).

Each ``cxrmodel.evaluation.thresholds.calibrate_thresholds`` method should take <= 2 s. Reference, in the
same run: 14 plain ``sklearn.metrics.roc_curve`` calls (one per finding), the floor any
ROC-based method pays. Probability calibration (``ProbabilityCalibrator.fit``, temperature
and Platt) is timed as well, against the same 2 s budget.
"""

from __future__ import annotations

import sys
import time
import typing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import emit  # noqa: E402

N_STUDIES = 25_000
# Share of studies with each finding in Data_Entry_2017.csv, in cxrmodel.findings.FINDINGS order.
NIH_PREVALENCE = (0.103, 0.025, 0.119, 0.177, 0.052, 0.056, 0.013, 0.047, 0.042, 0.021, 0.022, 0.015, 0.030, 0.002)
TARGET_S = 2.0


def synthetic_predictions(n: int = N_STUDIES, seed: int = 0):
    """``(labels int [n, 14], probabilities float64 [n, 14])``: labels at NIH prevalences, and
    float32-rounded sigmoid outputs of a moderately good model (AUROC ~0.8), as a network gives."""
    import numpy as np
    from scipy.special import expit

    rng = np.random.default_rng(seed)
    prevalence = np.asarray(NIH_PREVALENCE)
    labels = (rng.random((n, prevalence.size)) < prevalence).astype(np.int64)
    logits = 1.2 * labels + rng.normal(0.0, 1.0, labels.shape) + np.log(prevalence / (1 - prevalence))
    return labels, expit(logits).astype(np.float32).astype(np.float64)


def best_of(repeats: int, fn) -> float:
    """Shortest wall time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    from sklearn.metrics import roc_curve

    from cxrmodel.config import ThresholdConfig
    from cxrmodel.evaluation.calibration import CALIBRATION_METHODS, ProbabilityCalibrator
    from cxrmodel.evaluation.thresholds import calibrate_thresholds

    labels, probs = synthetic_predictions()
    n, c = labels.shape
    shape = f"{n:,} x {c}"

    reference = best_of(3, lambda: [roc_curve(labels[:, j], probs[:, j]) for j in range(c)])
    emit(f"calibration: 14 sklearn roc_curve calls, {shape}", round(reference, 4), "s", "reference")

    methods = typing.get_args(ThresholdConfig.model_fields["method"].annotation)
    for method in methods:
        config = ThresholdConfig(method=method)
        seconds = best_of(3, lambda config=config: calibrate_thresholds(labels, probs, config))
        emit(
            f"calibration: thresholds '{method}', {shape}",
            round(seconds, 4),
            "s",
            f"{seconds / reference:.1f}x the roc_curve reference (target <= {TARGET_S:g} s)",
            seconds <= TARGET_S,
        )

    for method in CALIBRATION_METHODS:
        seconds = best_of(3, lambda method=method: ProbabilityCalibrator.fit(labels, probs, method))
        emit(
            f"calibration: ProbabilityCalibrator.fit '{method}', {shape}",
            round(seconds, 4),
            "s",
            f"{seconds / reference:.1f}x the roc_curve reference (target <= {TARGET_S:g} s)",
            seconds <= TARGET_S,
        )


if __name__ == "__main__":
    main()
