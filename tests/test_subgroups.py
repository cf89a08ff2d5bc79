"""cxrmodel.evaluation.subgroups: age bands, per-group metrics against direct evaluate_multilabel calls on
hand-made subsets, small groups, and the best-to-worst gaps."""

from __future__ import annotations

import numpy as np
import pytest

from cxrmodel.evaluation.calibration import expected_calibration_error
from cxrmodel.evaluation.metrics import evaluate_multilabel
from cxrmodel.evaluation.subgroups import AGE_BANDS, SUBGROUP_KEYS, age_band, subgroup_gaps, subgroup_metrics

NAMES = ("a", "b", "c")


@pytest.fixture
def problem():
    rng = np.random.default_rng(21)
    n = 240
    y_true = (rng.random((n, 3)) < [0.1, 0.3, 0.5]).astype(int)
    y_prob = np.clip(0.3 * y_true + 0.7 * rng.random((n, 3)), 0, 1)
    sex = np.array(["M", "F"] * (n // 2), dtype=object)
    view = np.where(np.arange(n) % 3 == 0, "AP", "PA").astype(object)
    view[:5] = None  # -> "unknown"
    return y_true, y_prob, np.array([0.4, 0.5, 0.6]), sex, view


def test_age_band_edges_and_unknown():
    ages = [0, 19, 19.5, 20, 39, 40, 59.9, 60, 79, 80, 101, None, float("nan")]
    expected = ["0-19", "0-19", "0-19", "20-39", "20-39", "40-59", "40-59", "60-79", "60-79", "80+", "80+", "unknown", "unknown"]
    bands = age_band(ages)
    assert bands.dtype == object and bands.tolist() == expected
    assert age_band(np.array([45.0, np.nan])).tolist() == ["40-59", "unknown"]
    assert AGE_BANDS == ("0-19", "20-39", "40-59", "60-79", "80+")
    with pytest.raises(ValueError, match="non-negative"):
        age_band([30, -1])
    with pytest.raises(ValueError, match="finite"):
        age_band([np.inf])
    with pytest.raises(ValueError, match="1-D"):
        age_band([[30]])


def test_rows_match_evaluate_multilabel_on_each_subset(problem):
    y_true, y_prob, thr, sex, view = problem
    rows = subgroup_metrics(y_true, y_prob, thr, {"sex": sex, "view": view}, findings=NAMES, n_bins=10)
    assert [(r["attribute"], r["group"]) for r in rows] == [
        ("sex", "F"),
        ("sex", "M"),
        ("view", "AP"),
        ("view", "PA"),
        ("view", "unknown"),
    ]
    masks = [sex == "F", sex == "M", view == "AP", view == "PA", np.arange(len(view)) < 5]
    for row, mask in zip(rows, masks, strict=True):
        assert tuple(row) == SUBGROUP_KEYS
        agg = evaluate_multilabel(y_true[mask], y_prob[mask], thr, findings=NAMES).aggregates
        assert row["n_studies"] == int(mask.sum()) == agg["n_studies"]
        assert row["n_positive_labels"] == int(y_true[mask].sum())
        for key in ("macro_auroc", "macro_f1", "micro_f1", "exact_match", "hamming_loss", "mean_brier"):
            assert row[key] == agg[key], key
        eces = [expected_calibration_error(y_true[mask][:, j], y_prob[mask][:, j], 10) for j in range(3)]
        assert row["mean_ece"] == pytest.approx(np.mean(eces))


def test_small_groups_keep_counts_but_no_metrics(problem):
    y_true, y_prob, thr, _, view = problem
    rows = subgroup_metrics(y_true, y_prob, thr, {"view": view}, findings=NAMES, min_studies=20)
    unknown = rows[-1]
    assert unknown["group"] == "unknown" and unknown["n_studies"] == 5
    assert unknown["n_positive_labels"] == int(y_true[:5].sum())
    assert all(unknown[k] is None for k in SUBGROUP_KEYS[4:])
    assert all(r["macro_auroc"] is not None for r in rows[:-1])


def test_macro_auroc_none_when_no_class_has_both_labels():
    y_true = np.array([[0, 1], [0, 1], [1, 0], [1, 1]])
    y_prob = np.array([[0.2, 0.9], [0.3, 0.8], [0.7, 0.1], [0.6, 0.4]])
    rows = subgroup_metrics(y_true, y_prob, 0.5, {"site": [1, 1, 2, 2]}, findings=("x", "y"))
    assert [r["group"] for r in rows] == [1, 2]
    assert rows[0]["macro_auroc"] is None  # site 1: x all 0, y all 1
    assert rows[1]["macro_auroc"] == pytest.approx(1.0)  # site 2: y has both values
    assert rows[0]["macro_f1"] == evaluate_multilabel(y_true[:2], y_prob[:2], 0.5, findings=("x", "y")).aggregates["macro_f1"]


def test_numpy_and_missing_group_values_are_normalised():
    y_true = np.array([[0], [1], [1], [0], [1], [0]])
    y_prob = np.array([[0.1], [0.9], [0.8], [0.3], [0.6], [0.5]])
    ages = np.array([25.0, np.nan, 70.0, 22.0, 71.0, 64.0])
    sex = np.array([0, 1, 1, 0, 1, 0])  # numpy ints -> Python ints
    rows = subgroup_metrics(y_true, y_prob, 0.5, {"age_band": age_band(ages), "sex": sex}, findings=("x",))
    assert [(r["attribute"], r["group"], r["n_studies"]) for r in rows] == [
        ("age_band", "20-39", 2),
        ("age_band", "60-79", 3),
        ("age_band", "unknown", 1),
        ("sex", 0, 3),
        ("sex", 1, 3),
    ]
    assert type(rows[3]["group"]) is int


def test_subgroup_gaps():
    rows = [
        {"attribute": "sex", "group": "F", "macro_auroc": 0.81, "macro_f1": 0.4},
        {"attribute": "sex", "group": "M", "macro_auroc": 0.77, "macro_f1": 0.5},
        {"attribute": "view", "group": "AP", "macro_auroc": 0.70, "macro_f1": 0.3},
        {"attribute": "view", "group": "PA", "macro_auroc": None, "macro_f1": 0.35},
        {"attribute": "age_band", "group": "80+", "macro_auroc": None, "macro_f1": None},
    ]
    assert subgroup_gaps(rows) == {"sex": pytest.approx(0.04), "view": 0.0, "age_band": None}
    assert subgroup_gaps(rows, "macro_f1") == {"sex": pytest.approx(0.1), "view": pytest.approx(0.05), "age_band": None}
    with pytest.raises(ValueError, match="metric"):
        subgroup_gaps(rows, "group")


def test_validation(problem):
    y_true, y_prob, thr, sex, _ = problem
    with pytest.raises(ValueError, match="shape"):
        subgroup_metrics(y_true, y_prob, thr, {"sex": sex[:-1]}, findings=NAMES)
    with pytest.raises(ValueError, match="min_studies"):
        subgroup_metrics(y_true, y_prob, thr, {"sex": sex}, findings=NAMES, min_studies=0)
    with pytest.raises(ValueError, match="finding names"):
        subgroup_metrics(y_true, y_prob, thr, {"sex": sex})
    assert subgroup_metrics(y_true, y_prob, thr, {}, findings=NAMES) == []
