"""cxrmodel.evaluation.bootstrap: the vectorised weighted AUROC / F1 against scikit-learn resample by
resample, patient grouping, determinism and input validation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from cxrmodel.evaluation.bootstrap import BootstrapResult, bootstrap_ci, bootstrap_counts, weighted_auroc
from cxrmodel.evaluation.metrics import evaluate_multilabel


def _problem(n: int, c: int, seed: int, signal: float = 0.35, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.08, 0.45, c)
    y_true = (rng.random((n, c)) < prevalence).astype(int)
    y_prob = np.clip(signal * y_true + (1 - signal) * rng.random((n, c)), 0.0, 1.0)
    if decimals is not None:
        y_prob = np.round(y_prob, decimals)  # many tied scores, across labels too
    return y_true, y_prob


@pytest.mark.parametrize("positive_rate", [0.2, 0.8])  # the minority label is positive, then negative
def test_weighted_auroc_matches_sklearn_with_ties(positive_rate):
    rng = np.random.default_rng(7)
    n = 250
    y = (rng.random(n) < positive_rate).astype(int)
    p = np.round(np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1), 1)  # 11 distinct scores
    weights = rng.integers(0, 4, size=(25, n)).astype(float)  # zeros included
    got = weighted_auroc(y, p, weights)
    expected = [roc_auc_score(y, p, sample_weight=w) for w in weights]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_weighted_auroc_unit_weights_is_plain_auroc_and_undefined_rows_are_nan():
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.4, 0.4, 0.8, 0.8, 0.9])
    weights = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 1], [2, 1, 0, 3, 0, 0.5]], dtype=float)
    got = weighted_auroc(y, p, weights)
    assert got[0] == pytest.approx(roc_auc_score(y, p))
    assert np.isnan(got[1])  # no weight on any negative
    assert got[2] == pytest.approx(roc_auc_score(y, p, sample_weight=weights[2]))


def test_weighted_auroc_validation():
    y, p = np.array([0, 1, 1]), np.array([0.2, 0.5, 0.9])
    with pytest.raises(ValueError, match="shape"):
        weighted_auroc(y, p, np.ones((2, 4)))
    with pytest.raises(ValueError, match="non-negative"):
        weighted_auroc(y, p, -np.ones((2, 3)))
    with pytest.raises(ValueError, match="1-D"):
        weighted_auroc(y[:, None], p[:, None], np.ones((2, 3)))


def test_bootstrap_counts_draw_each_group_n_times_in_total():
    counts = bootstrap_counts(50, 40, random_state=3)
    assert counts.shape == (50, 40)
    np.testing.assert_array_equal(counts.sum(axis=0), np.full(40, 50.0))
    np.testing.assert_array_equal(counts, bootstrap_counts(50, 40, random_state=3))
    assert (counts == np.round(counts)).all() and counts.min() >= 0


def test_intervals_are_percentiles_of_per_resample_sklearn_metrics():
    """Rebuild every resample's study weights and score it with scikit-learn directly."""
    n_patients, b, conf = 40, 30, 0.9
    y_true, y_prob = _problem(160, 3, seed=11, decimals=1)
    rng = np.random.default_rng(5)
    groups = np.array([f"P{k:03d}" for k in rng.integers(0, n_patients, 160)])
    thr = np.array([0.3, 0.5, 0.6])
    res = bootstrap_ci(y_true, y_prob, thr, groups, n_resamples=b, confidence=conf, random_state=9)

    _, first = np.unique(groups, return_index=True)
    order = groups[np.sort(first)]  # codes are assigned in first-seen order
    code_of = {g: i for i, g in enumerate(order)}
    codes = np.array([code_of[g] for g in groups])
    counts = bootstrap_counts(len(order), b, random_state=9)
    pred = (y_prob >= thr).astype(int)
    auroc = np.full((b, 3), np.nan)
    f1 = np.zeros((b, 3))
    for r in range(b):
        w = counts[codes, r]
        for j in range(3):
            if w[y_true[:, j] == 1].sum() > 0 and w[y_true[:, j] == 0].sum() > 0:
                auroc[r, j] = roc_auc_score(y_true[:, j], y_prob[:, j], sample_weight=w)
            f1[r, j] = f1_score(y_true[:, j], pred[:, j], sample_weight=w, zero_division=0)
    q = [5.0, 95.0]
    for j in range(3):
        col = auroc[:, j][np.isfinite(auroc[:, j])]
        np.testing.assert_allclose(res.auroc_ci[j], np.percentile(col, q), atol=1e-12)
        np.testing.assert_allclose(res.f1_ci[j], np.percentile(f1[:, j], q), atol=1e-12)
        assert res.n_auroc_defined[j] == col.size
    np.testing.assert_allclose(res.macro_auroc_ci, np.percentile(np.nanmean(auroc, axis=1), q), atol=1e-12)
    np.testing.assert_allclose(res.macro_f1_ci, np.percentile(f1.mean(axis=1), q), atol=1e-12)
    assert (res.n_resamples, res.n_groups, res.confidence) == (b, len(order), conf)


def test_interval_contains_the_point_estimate():
    y_true, y_prob = _problem(1500, 4, seed=2)
    groups = np.arange(1500) // 3
    res = bootstrap_ci(y_true, y_prob, 0.5, groups, n_resamples=200)
    point = evaluate_multilabel(y_true, y_prob, 0.5, findings=list("abcd"))
    assert isinstance(res, BootstrapResult)
    assert res.auroc_ci.shape == res.f1_ci.shape == (4, 2)
    for j, row in enumerate(point.per_class):
        assert res.auroc_ci[j, 0] <= row["auroc"] <= res.auroc_ci[j, 1]
        assert res.f1_ci[j, 0] <= row["f1"] <= res.f1_ci[j, 1]
        assert res.auroc_ci[j, 1] - res.auroc_ci[j, 0] < 0.15
    assert res.macro_auroc_ci[0] <= point.aggregates["macro_auroc"] <= res.macro_auroc_ci[1]
    assert res.macro_f1_ci[0] <= point.aggregates["macro_f1"] <= res.macro_f1_ci[1]


def test_patient_grouping_widens_intervals_when_studies_repeat():
    """Ten identical studies per patient carry one patient's worth of information."""
    y_one, p_one = _problem(150, 2, seed=4)
    y_true, y_prob = np.repeat(y_one, 10, axis=0), np.repeat(p_one, 10, axis=0)
    patients = np.repeat(np.arange(150), 10)
    by_patient = bootstrap_ci(y_true, y_prob, 0.5, patients, n_resamples=300, random_state=1)
    by_image = bootstrap_ci(y_true, y_prob, 0.5, np.arange(1500), n_resamples=300, random_state=1)
    assert by_patient.n_groups == 150 and by_image.n_groups == 1500

    def width(ci) -> float:
        return float(ci[1] - ci[0])

    assert width(by_patient.macro_auroc_ci) > 2.0 * width(by_image.macro_auroc_ci)
    assert width(by_patient.macro_f1_ci) > 2.0 * width(by_image.macro_f1_ci)


def test_same_random_state_same_result_and_other_state_differs():
    y_true, y_prob = _problem(300, 3, seed=8)
    groups = np.arange(300) % 70
    a = bootstrap_ci(y_true, y_prob, 0.4, groups, n_resamples=50, random_state=123)
    b = bootstrap_ci(y_true, y_prob, 0.4, groups, n_resamples=50, random_state=123)
    c = bootstrap_ci(y_true, y_prob, 0.4, groups, n_resamples=50, random_state=124)
    np.testing.assert_array_equal(a.auroc_ci, b.auroc_ci)
    np.testing.assert_array_equal(a.f1_ci, b.f1_ci)
    assert a.macro_auroc_ci == b.macro_auroc_ci and a.macro_f1_ci == b.macro_f1_ci
    assert not np.array_equal(a.auroc_ci, c.auroc_ci)


def test_single_label_class_is_nan_and_rare_class_drops_undefined_resamples():
    rng = np.random.default_rng(3)
    n = 200
    y_true = np.zeros((n, 3), dtype=int)
    y_true[:, 1] = rng.random(n) < 0.3
    y_true[7, 2] = 1  # a single positive study: resamples that miss its patient have no AUROC
    y_prob = np.clip(0.3 * y_true + 0.6 * rng.random((n, 3)), 0, 1)
    res = bootstrap_ci(y_true, y_prob, 0.5, np.arange(n), n_resamples=100)
    assert np.isnan(res.auroc_ci[0]).all() and res.n_auroc_defined[0] == 0
    assert np.isfinite(res.f1_ci[0]).all()  # F1 is always defined (zero_division=0)
    assert 0 < res.n_auroc_defined[2] < 100  # ~63 % of resamples draw the one positive
    assert np.isfinite(res.auroc_ci[2]).all() and res.n_auroc_defined[1] == 100
    assert np.isfinite(res.macro_auroc_ci).all()


def test_validation_errors():
    y_true, y_prob = _problem(20, 2, seed=0)
    groups = np.arange(20)
    with pytest.raises(ValueError, match="groups must have shape"):
        bootstrap_ci(y_true, y_prob, 0.5, groups[:-1])
    with pytest.raises(ValueError, match="missing"):
        bootstrap_ci(y_true, y_prob, 0.5, [None] + list(range(19)))
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(y_true, y_prob, 0.5, groups, n_resamples=0)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(y_true, y_prob, 0.5, groups, n_resamples=2.5)
    for confidence in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="confidence"):
            bootstrap_ci(y_true, y_prob, 0.5, groups, confidence=confidence)
    with pytest.raises(ValueError, match="thresholds"):
        bootstrap_ci(y_true, y_prob, [0.5, 0.5, 0.5], groups)
    with pytest.raises(ValueError, match="shape"):
        bootstrap_ci(y_true, y_prob[:, :1], 0.5, groups)
