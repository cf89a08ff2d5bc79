"""Full evaluation of a test split of realistic size: 25,000 studies x 14 findings from about
8,000 patients, as the evaluate task runs it: point metrics (``evaluate_multilabel``), the
patient-level bootstrap with 1,000 resamples, per-class ECE, and subgroup metrics by sex, age
band and view. Target: <= 60 s in all on 2 CPU cores. Reference, in the same run: one
``evaluate_multilabel`` call on the same data.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.calibration_speed import best_of, synthetic_predictions  # noqa: E402
from bench.common import emit  # noqa: E402

N_PATIENTS = 8_000
N_RESAMPLES = 1_000
TARGET_S = 60.0


def main() -> None:
    import numpy as np

    from cxrmodel.evaluation.bootstrap import bootstrap_ci
    from cxrmodel.evaluation.calibration import expected_calibration_error
    from cxrmodel.evaluation.metrics import evaluate_multilabel
    from cxrmodel.evaluation.subgroups import age_band, subgroup_metrics

    labels, probs = synthetic_predictions(seed=1)
    n, c = labels.shape
    rng = np.random.default_rng(2)
    patients = np.array([f"P{k:05d}" for k in rng.integers(0, N_PATIENTS, n)])
    ages = np.where(rng.random(n) < 0.01, np.nan, np.clip(rng.normal(47, 17, n), 1, 95))
    attributes = {
        "sex": np.where(rng.random(n) < 0.56, "M", "F").astype(object),
        "age_band": age_band(ages),
        "view": np.where(rng.random(n) < 0.6, "PA", "AP").astype(object),
    }
    thresholds = np.full(c, 0.3)
    shape = f"{n:,} x {c}, {len(set(patients)):,} patients"

    reference = best_of(3, lambda: evaluate_multilabel(labels, probs, thresholds))
    emit(f"evaluation: one evaluate_multilabel call, {shape}", round(reference, 3), "s", "reference")

    parts = {
        "evaluate_multilabel": lambda: evaluate_multilabel(labels, probs, thresholds),
        f"bootstrap_ci ({N_RESAMPLES:,} patient resamples)": lambda: bootstrap_ci(
            labels, probs, thresholds, patients, N_RESAMPLES
        ),
        "per-class ECE (15 bins)": lambda: [expected_calibration_error(labels[:, j], probs[:, j]) for j in range(c)],
        "subgroup_metrics (sex, age band, view)": lambda: subgroup_metrics(labels, probs, thresholds, attributes, min_studies=20),
    }
    total = 0.0
    for name, run in parts.items():
        seconds = best_of(1, run)
        total += seconds
        emit(f"evaluation: {name}", round(seconds, 3), "s", f"{seconds / reference:.1f}x the reference")
    emit(
        f"evaluation: all parts, {shape}",
        round(total, 2),
        "s",
        f"{total / reference:.1f}x the reference (target <= {TARGET_S:g} s)",
        total <= TARGET_S,
    )


if __name__ == "__main__":
    main()
