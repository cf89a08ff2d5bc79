"""cxrmodel.evaluation.thresholds: hand-computed answers, a slow scikit-learn reference, JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score

from cxrmodel.config import ThresholdConfig
from cxrmodel.evaluation.thresholds import (
    ThresholdResult,
    calibrate_thresholds,
    dynamic_f1_thresholds,
    fixed_sensitivity_thresholds,
    load_thresholds_json,
    precision_constrained_f1_thresholds,
    save_thresholds_json,
    threshold_grid,
    youden_thresholds,
)
from cxrmodel.findings import FINDINGS

C = len(FINDINGS)
GRID = np.round(np.arange(0.10, 0.85 + 1e-9, 0.05), 2)

# Hand case "H" (one class, 10 studies). Positives 0.82, 0.62, 0.32, 0.03; negatives the rest.
# Per grid threshold (tp, fp) -> precision, F1 with P = 4:
#   0.80/0.75: (1,0) 1.000 0.400    0.40/0.35: (2,3) 0.400 0.444
#   0.70/0.65: (1,1) 0.500 0.333    0.30/0.25: (3,3) 0.500 0.600   <- best F1, tie -> 0.25
#   0.60/0.55: (2,1) 0.667 0.571    0.20/0.15: (3,4) 0.429 0.545
#   0.50/0.45: (2,2) 0.500 0.500    0.10:      (3,5) 0.375 0.500
H_TRUE = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
H_PROB = np.array([0.82, 0.62, 0.32, 0.03, 0.72, 0.52, 0.42, 0.22, 0.12, 0.05])

# Weak case "W": one positive caught at 0.9, seven missed at 0.02; negatives 0.30, 0.20, 0.02, 0.02.
# Thresholds 0.35..0.85: tp=1, fp=0, F1 = 2/9 = 0.222 (tie -> 0.35); 0.30: fp=1, precision 0.5,
# F1 = 2/10; 0.25 and below: precision <= 1/3 < 0.40.
W_TRUE = np.array([1] + [1] * 7 + [0, 0, 0, 0])
W_PROB = np.array([0.9] + [0.02] * 7 + [0.30, 0.20, 0.02, 0.02])

# Hopeless case "X": positives score low, negatives high: precision 0 at every grid value.
X_TRUE = np.array([1, 1, 0, 0, 0])
X_PROB = np.array([0.05, 0.06, 0.5, 0.6, 0.9])


def col(*arrays: np.ndarray) -> np.ndarray:
    return np.stack(arrays, axis=1)


def test_default_grid():
    np.testing.assert_array_equal(threshold_grid(), GRID)
    assert len(GRID) == 16 and GRID[0] == 0.10 and GRID[-1] == 0.85


# ------------------------------------------------------------------------- Youden


def test_youden_separable_class_gets_lowest_positive_score():
    y_true = col(np.array([0, 0, 0, 1, 1, 1]))
    y_prob = col(np.array([0.1, 0.2, 0.35, 0.6, 0.7, 0.9]))
    res = youden_thresholds(y_true, y_prob, findings=("A",))
    assert res.method == "youden"
    assert res.thresholds.tolist() == [0.6]
    assert res.best_f1.tolist() == [1.0]
    assert res.notes == {}


def test_youden_tie_goes_to_highest_threshold():
    # J: 0.8 -> 1/3, 0.6 -> 2/3, 0.5 -> 1/3, 0.4 -> 2/3, 0.3 -> 1/3
    y_true = col(np.array([0, 0, 1, 0, 1, 1]))
    y_prob = col(np.array([0.1, 0.3, 0.4, 0.5, 0.6, 0.8]))
    assert youden_thresholds(y_true, y_prob, findings=("A",)).thresholds.tolist() == [0.6]


def test_youden_never_returns_infinity():
    y_true = col(np.array([1, 1, 0, 0]))
    y_prob = col(np.array([0.1, 0.2, 0.8, 0.9]))  # anti-correlated: best J = 0 at roc_curve's inf
    res = youden_thresholds(y_true, y_prob, findings=("A",))
    assert res.thresholds.tolist() == [1.0]
    assert "chance" in res.notes["A"]


# ------------------------------------------------------------------------- grid methods


@pytest.mark.parametrize(("min_precision", "expected"), [(0.40, 0.25), (0.55, 0.55), (1.0, 0.75)])
def test_precision_constrained_hand_case(min_precision, expected):
    res = precision_constrained_f1_thresholds(col(H_TRUE), col(H_PROB), min_precision, findings=("H",))
    assert res.method == "precision_constrained_f1"
    assert res.thresholds.tolist() == [expected]
    assert res.notes == {}


def test_precision_constrained_best_f1_and_fallback():
    res = precision_constrained_f1_thresholds(
        col(H_TRUE, W_TRUE[:10], X_TRUE.repeat(2)), col(H_PROB, W_PROB[:10], X_PROB.repeat(2)), findings="HWX"
    )
    assert res.thresholds[0] == 0.25
    assert res.best_f1[0] == pytest.approx(0.6)
    assert res.thresholds[2] == 0.5
    assert res.best_f1[2] == 0.0
    assert set(res.notes) == {"X"} and "precision 0.40" in res.notes["X"]


def test_dynamic_lowers_only_weak_classes():
    y_true = col(H_TRUE[:10], np.r_[W_TRUE[:10]], X_TRUE.repeat(2))
    y_prob = col(H_PROB[:10], np.r_[W_PROB[:10]], X_PROB.repeat(2))
    # W without its last two negatives: still tp=1, fp=0 for 0.35..0.85, P=8 -> F1 2/9
    base = precision_constrained_f1_thresholds(y_true, y_prob, findings="HWX")
    assert base.thresholds.tolist() == [0.25, 0.35, 0.5]
    assert base.best_f1[1] == pytest.approx(2 / 9)
    dyn = dynamic_f1_thresholds(y_true, y_prob, findings="HWX")
    assert dyn.method == "dynamic_f1"
    assert dyn.thresholds.tolist() == [0.25, 0.30, 0.45]  # H (F1 0.6) unchanged; W, X lowered by 0.05
    assert "H" not in dyn.notes
    assert "lowered" in dyn.notes["W"] and "lowered" in dyn.notes["X"]
    assert dyn.best_f1[0] == pytest.approx(0.6)
    assert dyn.best_f1[1] == pytest.approx(2 / 10)  # F1 re-measured at the lowered threshold 0.30


def test_dynamic_respects_low_f1_and_adjustment_and_floor():
    y_true, y_prob = col(W_TRUE), col(W_PROB)
    assert dynamic_f1_thresholds(y_true, y_prob, low_f1=0.2, findings="W").thresholds.tolist() == [0.35]
    assert dynamic_f1_thresholds(y_true, y_prob, adjustment=0.1, findings="W").thresholds.tolist() == [0.25]
    floored = dynamic_f1_thresholds(y_true, y_prob, grid=[0.02], low_f1=0.95, findings="W")
    assert floored.thresholds.tolist() == [0.0]


def test_fixed_sensitivity_hand_case():
    # positives 0.82, 0.62, 0.32, 0.03: recall >= 0.5 first at 0.62, >= 0.75 at 0.32, 1.0 at 0.03
    for sens, expected in [(0.5, 0.62), (0.75, 0.32), (0.9, 0.03), (1.0, 0.03), (0.2, 0.82)]:
        res = fixed_sensitivity_thresholds(col(H_TRUE), col(H_PROB), sens, findings="H")
        assert res.thresholds.tolist() == [expected], sens


@pytest.mark.parametrize(
    "method",
    [youden_thresholds, precision_constrained_f1_thresholds, dynamic_f1_thresholds, fixed_sensitivity_thresholds],
)
def test_single_label_class_gets_default_and_note(method):
    y_true = col(H_TRUE, np.zeros(10, int), np.ones(10, int))
    y_prob = col(H_PROB, H_PROB, H_PROB)
    res = method(y_true, y_prob, findings=("H", "Z", "O"))
    assert res.thresholds[1:].tolist() == [0.5, 0.5]
    assert "single label value" in res.notes["Z"] and "all 0" in res.notes["Z"]
    assert "single label value" in res.notes["O"] and "all 1" in res.notes["O"]
    assert "H" not in res.notes
    assert np.isnan(res.best_f1[1:]).all() and not np.isnan(res.best_f1[0])


# ------------------------------------------------------------------------- slow reference


def _random_problem(seed: int, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.02, 0.45, C)
    y_true = (rng.random((n, C)) < prevalence).astype(int)
    strength = np.linspace(0.05, 0.6, C)
    y_prob = np.clip(strength * y_true + rng.random((n, C)) * (1 - strength), 0, 1)
    y_prob = np.round(y_prob, 2)  # many ties, some exactly on grid values
    return y_true, y_prob


def _reference_grid(y_true, y_prob, min_precision, grid=GRID):
    thr, best = [], []
    for j in range(y_true.shape[1]):
        scored = []
        for t in grid:
            pred = (y_prob[:, j] >= t).astype(int)
            p = precision_score(y_true[:, j], pred, zero_division=0)
            f = f1_score(y_true[:, j], pred, zero_division=0)
            if p >= min_precision:
                scored.append((f, t))
        if not scored:
            thr.append(0.5)
            best.append(f1_score(y_true[:, j], (y_prob[:, j] >= 0.5).astype(int), zero_division=0))
            continue
        top = max(f for f, _ in scored)
        t = min(t for f, t in scored if f == top)
        thr.append(t)
        best.append(top)
    return np.array(thr), np.array(best)


@pytest.mark.parametrize(("seed", "min_precision"), [(0, 0.40), (1, 0.0), (2, 0.6), (3, 0.25)])
def test_vectorised_grid_matches_sklearn_loop(seed, min_precision):
    y_true, y_prob = _random_problem(seed)
    ref_thr, ref_f1 = _reference_grid(y_true, y_prob, min_precision)
    res = precision_constrained_f1_thresholds(y_true, y_prob, min_precision)
    np.testing.assert_array_equal(res.thresholds, ref_thr)
    np.testing.assert_allclose(res.best_f1, ref_f1, rtol=0, atol=1e-12)
    assert len(set(res.thresholds.tolist())) > 3  # the search really varies across classes

    dyn = dynamic_f1_thresholds(y_true, y_prob, min_precision)
    weak = ref_f1 < 0.30
    assert weak.any() and (~weak).any()
    np.testing.assert_allclose(dyn.thresholds, np.where(weak, np.round(ref_thr - 0.05, 4), ref_thr), atol=1e-12)


@pytest.mark.parametrize("seed", [4, 5])
def test_youden_and_sensitivity_match_brute_force(seed):
    y_true, y_prob = _random_problem(seed)
    you = youden_thresholds(y_true, y_prob)
    sens = fixed_sensitivity_thresholds(y_true, y_prob, 0.9)
    for j in range(C):
        cands = np.unique(y_prob[:, j])[::-1]  # descending
        pos, neg = y_true[:, j] == 1, y_true[:, j] == 0
        rec = np.array([np.mean(y_prob[pos, j] >= t) for t in cands])  # plain brute force, no roc_curve
        spec = np.array([np.mean(y_prob[neg, j] < t) for t in cands])
        j_stat = rec + spec - 1
        assert you.thresholds[j] == cands[np.flatnonzero(j_stat >= j_stat.max() - 1e-12)[0]]
        assert sens.thresholds[j] == cands[np.flatnonzero(rec >= 0.9)[0]]


# ------------------------------------------------------------------------- dispatch and JSON


def test_calibrate_dispatches_with_config_values():
    y_true, y_prob = _random_problem(8)
    res = calibrate_thresholds(y_true, y_prob, ThresholdConfig(method="youden"))
    np.testing.assert_array_equal(res.thresholds, youden_thresholds(y_true, y_prob).thresholds)
    cfg = ThresholdConfig(method="precision_constrained_f1", min_precision=0.3, grid_start=0.2, grid_stop=0.5, grid_step=0.1)
    res = calibrate_thresholds(y_true, y_prob, cfg)
    ref, _ = _reference_grid(y_true, y_prob, 0.3, grid=np.array([0.2, 0.3, 0.4, 0.5]))
    np.testing.assert_array_equal(res.thresholds, ref)
    cfg = ThresholdConfig(method="dynamic_f1", low_f1=0.5, adjustment=0.02)
    res = calibrate_thresholds(y_true, y_prob, cfg)
    np.testing.assert_array_equal(res.thresholds, dynamic_f1_thresholds(y_true, y_prob, low_f1=0.5, adjustment=0.02).thresholds)
    assert res.method == "dynamic_f1"
    res = calibrate_thresholds(y_true, y_prob, ThresholdConfig(method="fixed_sensitivity", min_sensitivity=0.8))
    np.testing.assert_array_equal(res.thresholds, fixed_sensitivity_thresholds(y_true, y_prob, 0.8).thresholds)
    assert res.method == "fixed_sensitivity"


def test_invalid_parameters_raise():
    y_true, y_prob = col(H_TRUE), col(H_PROB)
    with pytest.raises(ValueError, match="min_precision"):
        precision_constrained_f1_thresholds(y_true, y_prob, 1.5, findings="H")
    with pytest.raises(ValueError, match="grid"):
        precision_constrained_f1_thresholds(y_true, y_prob, grid=[0.2, 1.2], findings="H")
    with pytest.raises(ValueError, match="min_sensitivity"):
        fixed_sensitivity_thresholds(y_true, y_prob, 0.0, findings="H")
    with pytest.raises(ValueError, match="finding names"):
        youden_thresholds(y_true, y_prob)  # 1 column, 14 default names
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        youden_thresholds(y_true, col(H_PROB + 0.5), findings="H")


def test_as_dict_and_json_round_trip(tmp_path):
    y_true, y_prob = _random_problem(9)
    y_true[:, 13] = 0
    res = dynamic_f1_thresholds(y_true, y_prob)
    assert list(res.as_dict()) == list(FINDINGS)
    path = save_thresholds_json(res, tmp_path / "sub" / "thresholds.json")
    data = json.loads(path.read_text())
    assert data["method"] == "dynamic_f1"
    assert data["thresholds"] == res.as_dict()
    assert data["notes"] == res.notes and "Hernia" in data["notes"]
    np.testing.assert_array_equal(load_thresholds_json(path), res.thresholds)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t.update({"Pneumonitis": 0.3}), "unknown finding"),
        (lambda t: t.pop("Hernia"), "missing"),
        (lambda t: t.update({"Mass": 1.5}), "Mass"),
        (lambda t: t.update({"Mass": True}), "Mass"),
        (lambda t: t.update({"Mass": "0.4"}), "Mass"),
    ],
)
def test_load_rejects_bad_files(tmp_path, edit, match):
    table = {name: 0.5 for name in FINDINGS}
    edit(table)
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"method": "youden", "thresholds": table, "notes": {}}))
    with pytest.raises(ValueError, match=match):
        load_thresholds_json(path)


def test_result_is_frozen():
    res = ThresholdResult(np.array([0.5]), "youden")
    with pytest.raises(AttributeError):
        res.method = "x"  # type: ignore[misc]
