"""cxrmodel.evaluation.metrics.pr_curves against scikit-learn (the curves the reports draw)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve

from cxrmodel.evaluation.metrics import evaluate_multilabel, pr_curves
from cxrmodel.findings import FINDINGS

C = len(FINDINGS)


@pytest.fixture
def problem() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    y_true = (rng.random((250, C)) < np.linspace(0.04, 0.5, C)).astype(int)
    y_prob = np.clip(0.3 * y_true + 0.7 * rng.random((250, C)), 0.0, 1.0)
    return y_true, y_prob


def test_pr_curves_match_sklearn(problem):
    y_true, y_prob = problem
    curves = pr_curves(y_true, y_prob)
    assert list(curves) == list(FINDINGS)
    for j, name in enumerate(FINDINGS):
        recall, precision, ap = curves[name]
        ref_precision, ref_recall, _ = precision_recall_curve(y_true[:, j], y_prob[:, j])
        np.testing.assert_array_equal(recall, ref_recall)
        np.testing.assert_array_equal(precision, ref_precision)
        assert ap == pytest.approx(average_precision_score(y_true[:, j], y_prob[:, j]), abs=1e-12)


def test_average_precision_is_the_reported_pr_auc(problem):
    y_true, y_prob = problem
    per_class = evaluate_multilabel(y_true, y_prob, 0.5).per_class
    curves = pr_curves(y_true, y_prob)
    assert [curves[r["finding"]][2] for r in per_class] == pytest.approx([r["pr_auc"] for r in per_class])


def test_single_label_classes_are_skipped(problem):
    y_true, y_prob = problem
    y_true[:, 3] = 0
    y_true[:, 7] = 1
    curves = pr_curves(y_true, y_prob)
    assert FINDINGS[3] not in curves and FINDINGS[7] not in curves and len(curves) == C - 2
    assert pr_curves(np.zeros((4, 2), dtype=int), np.full((4, 2), 0.3), findings=("a", "b")) == {}


def test_inputs_are_validated(problem):
    y_true, y_prob = problem
    with pytest.raises(ValueError):
        pr_curves(y_true[:, :5], y_prob)
    with pytest.raises(ValueError):
        pr_curves(y_true, y_prob, findings=("a", "b"))
    bad = y_prob.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError):
        pr_curves(y_true, bad)
