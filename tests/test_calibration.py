"""cxrmodel.evaluation.calibration: ECE by hand and against a plain loop, reliability curve against
scikit-learn, temperature and Platt scaling on synthetic miscalibrated predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit, logit
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score

from cxrmodel.evaluation.calibration import (
    ProbabilityCalibrator,
    calibration_summary,
    expected_calibration_error,
    reliability_curve,
)

NAMES = ("a", "b", "c")


def _reference_ece(y: np.ndarray, p: np.ndarray, n_bins: int) -> float:
    """Plain loop: bin k holds (edge k, edge k+1], the first bin also holds 0."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for k in range(n_bins):
        low, high = edges[k], edges[k + 1]
        inside = (p > low) & (p <= high) if k else (p >= low) & (p <= high)
        if inside.any():
            total += inside.sum() / len(p) * abs(y[inside].mean() - p[inside].mean())
    return total


def _miscalibrated(n: int, temperatures, seed: int, prevalence_shift: float = -1.5):
    """Labels drawn from sigmoid(z); the model reports sigmoid(T * z), i.e. a true temperature T."""
    rng = np.random.default_rng(seed)
    z = rng.normal(prevalence_shift, 1.5, size=(n, len(temperatures)))
    y = (rng.random(z.shape) < expit(z)).astype(int)
    return y, expit(z * np.asarray(temperatures)[None, :])


def test_ece_hand_checked():
    y = np.array([0, 1, 1, 0])
    p = np.array([0.1, 0.3, 0.8, 0.9])
    # bins [0, 0.5] and (0.5, 1]: |0.5 - 0.2| * 2/4 + |0.5 - 0.85| * 2/4
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.325)
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0
    assert expected_calibration_error([0, 0], [1.0, 1.0]) == 1.0


@pytest.mark.parametrize("n_bins", [1, 5, 10, 15])
def test_ece_matches_reference_loop_including_bin_edges(n_bins):
    rng = np.random.default_rng(n_bins)
    p = np.concatenate([rng.random(400), np.linspace(0, 1, n_bins + 1), np.linspace(0, 1, 21)])  # on the edges
    y = (rng.random(p.size) < p**1.5).astype(int)
    assert expected_calibration_error(y, p, n_bins) == pytest.approx(_reference_ece(y, p, n_bins), abs=1e-12)


@pytest.mark.parametrize("n_bins", [3, 10, 15])
def test_reliability_curve_matches_sklearn(n_bins):
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.random(300) ** 2, [0.0, 0.1, 0.5, 1.0]])
    y = (rng.random(p.size) < p).astype(int)
    mean_pred, observed, count = reliability_curve(y, p, n_bins)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    np.testing.assert_allclose(mean_pred, prob_pred, rtol=0, atol=1e-15)
    np.testing.assert_allclose(observed, prob_true, rtol=0, atol=1e-15)
    assert count.sum() == p.size and (count > 0).all() and count.dtype.kind == "i"
    assert np.sum(count * np.abs(observed - mean_pred)) / p.size == pytest.approx(expected_calibration_error(y, p, n_bins))


def test_binary_input_validation():
    with pytest.raises(ValueError, match="1-D"):
        expected_calibration_error([[0, 1]], [[0.2, 0.4]])
    with pytest.raises(ValueError, match="0 and 1"):
        expected_calibration_error([0, 2], [0.2, 0.4])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reliability_curve([0, 1], [0.2, 1.4])
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error([0, 1], [0.2, 0.4], n_bins=0)


def test_temperature_recovers_known_temperature():
    y, p = _miscalibrated(30_000, [2.5, 1.0, 0.5], seed=1)
    cal = ProbabilityCalibrator.fit(y, p, "temperature", findings=NAMES)
    np.testing.assert_allclose(cal.temperature, [2.5, 1.0, 0.5], rtol=0.06)
    assert cal.method == "temperature" and cal.notes == {}
    np.testing.assert_allclose(cal.transform(p), expit(logit(np.clip(p, 1e-7, 1 - 1e-7)) / cal.temperature))


def test_platt_matches_sklearn_logistic_regression_and_recovers_known_map():
    rng = np.random.default_rng(2)
    n = 20_000
    z = rng.normal(0.0, 2.0, size=(n, 3))
    true_slope, true_intercept = np.array([0.6, 1.0, 1.8]), np.array([-0.8, 0.0, 0.5])
    y = (rng.random(z.shape) < expit(true_slope * z + true_intercept)).astype(int)
    p = expit(z)
    cal = ProbabilityCalibrator.fit(y, p, "platt", findings=NAMES)
    for j in range(3):
        features = logit(np.clip(p[:, j], 1e-7, 1 - 1e-7))[:, None]
        lr = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(features, y[:, j])  # no penalty at all
        assert cal.slope[j] == pytest.approx(lr.coef_[0, 0], rel=1e-5)
        assert cal.intercept[j] == pytest.approx(lr.intercept_[0], rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(cal.transform(p)[:, j], lr.predict_proba(features)[:, 1], atol=1e-6)

        def log_loss(w, x=features[:, 0], t=y[:, j]):
            s = w[0] * x + w[1]
            return np.mean(np.logaddexp(0.0, s) - t * s)

        direct = minimize(log_loss, [1.0, 0.0], method="BFGS", options={"gtol": 1e-10}).x
        np.testing.assert_allclose([cal.slope[j], cal.intercept[j]], direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cal.slope, true_slope, rtol=0.06)
    np.testing.assert_allclose(cal.intercept, true_intercept, atol=0.06)


@pytest.mark.parametrize("method", ["temperature", "platt"])
def test_calibration_reduces_ece_and_brier_on_held_out_data(method):
    temperatures = [3.0, 0.4, 2.0]
    y_val, p_val = _miscalibrated(8000, temperatures, seed=10)
    y_test, p_test = _miscalibrated(8000, temperatures, seed=11)
    cal = ProbabilityCalibrator.fit(y_val, p_val, method, findings=NAMES)
    rows = calibration_summary(y_test, p_test, cal.transform(p_test), findings=NAMES)
    assert [r["finding"] for r in rows] == list(NAMES)
    for row in rows:
        assert set(row) == {"finding", "brier_before", "brier_after", "ece_before", "ece_after"}
        assert row["ece_after"] < 0.5 * row["ece_before"]
        assert row["brier_after"] < row["brier_before"]
    j = 0
    assert rows[j]["brier_before"] == pytest.approx(brier_score_loss(y_test[:, j], p_test[:, j]))
    assert rows[j]["ece_after"] == pytest.approx(expected_calibration_error(y_test[:, j], cal.transform(p_test)[:, j], 15))


@pytest.mark.parametrize("method", ["temperature", "platt"])
def test_roundtrip_through_json_gives_identical_transform(method):
    y, p = _miscalibrated(3000, [2.0, 0.7, 1.3], seed=3)
    y[:, 1] = 0  # one identity class with a note
    cal = ProbabilityCalibrator.fit(y, p, method, findings=NAMES)
    data = json.loads(json.dumps(cal.to_dict()))
    assert data["method"] == method and list(data["parameters"]) == list(NAMES)
    assert set(data["parameters"]["a"]) == ({"temperature"} if method == "temperature" else {"slope", "intercept"})
    assert "b" in data["notes"]
    again = ProbabilityCalibrator.from_dict(data)
    np.testing.assert_array_equal(again.transform(p), cal.transform(p))
    assert again.findings == NAMES and again.notes == cal.notes


@pytest.mark.parametrize("method", ["temperature", "platt"])
def test_transform_is_monotone_per_class_and_keeps_auroc(method):
    y, p = _miscalibrated(4000, [2.0, 0.6, 1.0], seed=4)
    cal = ProbabilityCalibrator.fit(y, p, method, findings=NAMES)
    grid = np.tile(np.linspace(0, 1, 1001)[:, None], (1, 3))
    assert (np.diff(cal.transform(grid), axis=0) >= 0).all()
    after = cal.transform(p)
    for j in range(3):
        assert roc_auc_score(y[:, j], after[:, j]) == pytest.approx(roc_auc_score(y[:, j], p[:, j]), abs=1e-12)


def test_single_label_class_and_reversed_scores_stay_identity_with_notes():
    y, p = _miscalibrated(3000, [2.0, 2.0, 2.0], seed=5)
    y[:, 0] = 1
    p[:, 2] = 1.0 - p[:, 2]  # anti-correlated: a Platt slope < 0 would flip the ranking
    platt = ProbabilityCalibrator.fit(y, p, "platt", findings=NAMES)
    assert set(platt.notes) == {"a", "c"} and "all 1" in platt.notes["a"] and "slope" in platt.notes["c"]
    assert platt.slope[[0, 2]].tolist() == [1.0, 1.0] and platt.intercept[[0, 2]].tolist() == [0.0, 0.0]
    temp = ProbabilityCalibrator.fit(y, p, "temperature", findings=NAMES)
    assert temp.temperature[0] == 1.0 and "a" in temp.notes
    np.testing.assert_allclose(temp.transform(p)[:, 0], np.clip(p[:, 0], 1e-7, 1 - 1e-7), rtol=1e-12)


def test_calibrator_validation():
    y, p = _miscalibrated(200, [1.0, 1.0, 1.0], seed=6)
    with pytest.raises(ValueError, match="method"):
        ProbabilityCalibrator.fit(y, p, "isotonic", findings=NAMES)
    with pytest.raises(ValueError, match="finding names"):
        ProbabilityCalibrator.fit(y, p, "platt")  # 14 default names for 3 columns
    cal = ProbabilityCalibrator.fit(y, p, "temperature", findings=NAMES)
    with pytest.raises(ValueError, match="shape"):
        cal.transform(p[:, :2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cal.transform(p + 1.0)
    with pytest.raises(ValueError, match="method"):
        ProbabilityCalibrator.from_dict({"method": "none", "parameters": {}})
    with pytest.raises(ValueError, match="temperature"):
        ProbabilityCalibrator.from_dict({"method": "temperature", "parameters": {"a": {"slope": 1.0}}})
    with pytest.raises(ValueError, match="positive"):
        ProbabilityCalibrator.from_dict({"method": "temperature", "parameters": {"a": {"temperature": -1.0}}})


def test_separable_validation_data_gives_finite_parameters():
    p = np.array([[0.1], [0.2], [0.3], [0.7], [0.8], [0.9]])
    y = np.array([[0], [0], [0], [1], [1], [1]])
    platt = ProbabilityCalibrator.fit(y, p, "platt", findings=("x",))
    assert np.isfinite(platt.slope).all() and platt.slope[0] > 1.0  # C = 1e6 keeps it finite
    temp = ProbabilityCalibrator.fit(y, p, "temperature", findings=("x",))
    assert temp.temperature[0] == pytest.approx(0.01) and "search bound" in temp.notes["x"]


def test_a_calibration_that_worsens_a_findings_validation_ece_is_not_applied_to_it():
    """Finding A is calibrated already (labels drawn from its probabilities): the log-loss
    temperature fitted on this sample makes its ECE worse, so A keeps identity and is listed;
    B (probabilities cubed) is helped and keeps its fitted temperature."""
    rng = np.random.default_rng(8)
    p = rng.uniform(0.02, 0.98, size=(300, 2))
    t = (rng.random((300, 2)) < p).astype(int)
    p[:, 1] = np.clip(p[:, 1] ** 3, 0.001, 0.999)
    unchecked = ProbabilityCalibrator.fit(t, p, "temperature", findings=("A", "B"), keep_if_worse=True)
    raw_after = unchecked.transform(p)
    ece = [(expected_calibration_error(t[:, j], p[:, j]), expected_calibration_error(t[:, j], raw_after[:, j])) for j in range(2)]
    assert ece[0][1] > ece[0][0] and ece[1][1] < ece[1][0]  # the premise, by hand
    checked = ProbabilityCalibrator.fit(t, p, "temperature", findings=("A", "B"))
    assert set(checked.not_applied) == {"A"}
    np.testing.assert_allclose(checked.not_applied["A"], ece[0])
    assert checked.temperature[0] == 1.0 and checked.temperature[1] == pytest.approx(unchecked.temperature[1])
    out = checked.transform(p)
    np.testing.assert_allclose(out[:, 0], p[:, 0], atol=1e-9)  # identity for A
    np.testing.assert_allclose(out[:, 1], raw_after[:, 1])
    assert "worse" in checked.notes["A"] and "not applied" in checked.notes["A"]
    again = ProbabilityCalibrator.from_dict(checked.to_dict())
    assert set(again.not_applied) == {"A"} and again.not_applied["A"] == pytest.approx(checked.not_applied["A"])
    np.testing.assert_allclose(again.transform(p), out)
