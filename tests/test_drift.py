"""The drift rule of the nightly scoring report (cxrmodel.evaluation.drift)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrmodel.evaluation.drift import DRIFT_MIN_COUNT, DRIFT_RATIO, DriftStatus, drift_status


@pytest.mark.parametrize(
    ("n_flagged", "rate", "prevalence", "n_scored", "expected"),
    [
        (40, 0.40, 0.10, 100, (4.0, True)),  # 4x the training prevalence
        (10, 0.10, 0.05, 100, (2.0, True)),  # exactly 2x
        (19, 0.19, 0.10, 100, (1.9, False)),
        (2, 0.02, 0.10, 100, (0.2, True)),  # few flags, but 10 expected
        (3, 0.30, 0.10, 10, (3.0, False)),  # 3 flags, 1 expected: too few to tell
        (0, 0.0, 0.0, 100, (None, False)),
        (6, 0.06, 0.0, 100, (None, True)),  # never seen in training, now flagged
        (5, None, 0.1, 100, (None, False)),
    ],
)
def test_drift_rule(n_flagged, rate, prevalence, n_scored, expected):
    ratio, drift = drift_status(n_flagged, rate, prevalence, n_scored)
    assert drift is expected[1]
    assert ratio == (pytest.approx(expected[0]) if expected[0] is not None else None)


def test_defaults_and_result_type():
    assert (DRIFT_RATIO, DRIFT_MIN_COUNT) == (2.0, 5)
    status = drift_status(40, 0.4, 0.1, 100)
    assert isinstance(status, DriftStatus) and status.drift and status.ratio == pytest.approx(4.0)


def test_without_n_scored_the_flags_alone_count():
    assert drift_status(4, 0.001, 0.1).drift is False  # 0.01x, but only 4 flags and nothing expected
    assert drift_status(5, 0.001, 0.1).drift is True


def test_unknown_values_and_numpy_scalars():
    assert drift_status(None, 0.4, 0.1, 100) == (pytest.approx(4.0), True)  # 10 expected
    assert drift_status(40, math.nan, 0.1, 100) == (None, False)
    assert drift_status(np.int64(40), np.float32(0.4), np.float64(0.1), np.int64(100)).drift is True


def test_the_limits_can_be_tightened():
    assert drift_status(16, 0.16, 0.10, 100).drift is False
    assert drift_status(16, 0.16, 0.10, 100, ratio_limit=1.5).drift is True
    assert drift_status(40, 0.4, 0.1, 100, min_count=50).drift is False


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((-1, 0.1, 0.1, 100), ValueError, "n_flagged"),
        ((1, 1.5, 0.1, 100), ValueError, "flag_rate"),
        ((1, 0.1, -0.1, 100), ValueError, "prevalence"),
        ((1, 0.1, 0.1, -5), ValueError, "n_scored"),
        ((200, 0.1, 0.1, 100), ValueError, "exceeds n_scored"),
        ((1, "0.1", 0.1, 100), TypeError, "flag_rate"),
        ((True, 0.1, 0.1, 100), TypeError, "n_flagged"),
    ],
)
def test_invalid_inputs_are_refused(args, error, match):
    with pytest.raises(error, match=match):
        drift_status(*args)


def test_ratio_limit_must_exceed_one():
    with pytest.raises(ValueError, match="ratio_limit"):
        drift_status(1, 0.1, 0.1, 100, ratio_limit=1.0)
