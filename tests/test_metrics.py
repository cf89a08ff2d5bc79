"""cxrmodel.evaluation.metrics against direct scikit-learn calls and a hand-checked example."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    hamming_loss,
    label_ranking_average_precision_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from cxrmodel.evaluation.metrics import (
    AGGREGATE_KEYS,
    PER_CLASS_KEYS,
    apply_thresholds,
    epoch_summary,
    evaluate_multilabel,
    roc_curves,
    validate_multilabel,
)
from cxrmodel.findings import FINDINGS

C = len(FINDINGS)


@pytest.fixture
def random_problem() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1234)
    n = 300
    prevalence = np.linspace(0.03, 0.5, C)
    y_true = (rng.random((n, C)) < prevalence).astype(int)
    y_prob = np.clip(0.35 * y_true + 0.65 * rng.random((n, C)), 0.0, 1.0)
    thresholds = rng.uniform(0.2, 0.8, C)
    return y_true, y_prob, thresholds


def test_aggregates_match_sklearn(random_problem):
    y_true, y_prob, thr = random_problem
    res = evaluate_multilabel(y_true, y_prob, thr)
    pred = (y_prob >= thr).astype(int)
    agg = res.aggregates
    assert tuple(agg) == AGGREGATE_KEYS
    zd = {"zero_division": 0}
    expected = {
        "n_studies": 300,
        "macro_auroc": np.mean([roc_auc_score(y_true[:, j], y_prob[:, j]) for j in range(C)]),
        "micro_auroc": roc_auc_score(y_true, y_prob, average="micro"),
        "macro_f1": f1_score(y_true, pred, average="macro", **zd),
        "micro_f1": f1_score(y_true, pred, average="micro", **zd),
        "macro_precision": precision_score(y_true, pred, average="macro", **zd),
        "micro_precision": precision_score(y_true, pred, average="micro", **zd),
        "macro_recall": recall_score(y_true, pred, average="macro", **zd),
        "micro_recall": recall_score(y_true, pred, average="micro", **zd),
        "exact_match": accuracy_score(y_true, pred),
        "hamming_loss": hamming_loss(y_true, pred),
        "accuracy": 1.0 - hamming_loss(y_true, pred),
        "lrap": label_ranking_average_precision_score(y_true, y_prob),
        "mean_brier": np.mean([brier_score_loss(y_true[:, j], y_prob[:, j]) for j in range(C)]),
    }
    for key, value in expected.items():
        assert agg[key] == pytest.approx(value, abs=1e-12), key
        assert type(agg[key]) in (int, float), key
    assert 0.5 < agg["macro_auroc"] < 1.0  # the signal is real, not a degenerate fixture


def test_per_class_match_sklearn(random_problem):
    y_true, y_prob, thr = random_problem
    res = evaluate_multilabel(y_true, y_prob, thr)
    assert [row["finding"] for row in res.per_class] == list(FINDINGS)
    for j, row in enumerate(res.per_class):
        assert tuple(row) == PER_CLASS_KEYS
        t, p = y_true[:, j], y_prob[:, j]
        pred = (p >= thr[j]).astype(int)
        tn, fp, fn, tp = confusion_matrix(t, pred, labels=[0, 1]).ravel()
        assert (row["tp"], row["fp"], row["tn"], row["fn"]) == (tp, fp, tn, fn)
        assert row["n_positive"] == int(t.sum())
        assert row["auroc"] == pytest.approx(roc_auc_score(t, p), abs=1e-12)
        assert row["pr_auc"] == pytest.approx(average_precision_score(t, p), abs=1e-12)
        assert row["f1"] == pytest.approx(f1_score(t, pred, zero_division=0), abs=1e-12)
        assert row["precision"] == pytest.approx(precision_score(t, pred, zero_division=0), abs=1e-12)
        assert row["recall"] == pytest.approx(recall_score(t, pred, zero_division=0), abs=1e-12)
        assert row["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-12)
        assert row["npv"] == pytest.approx(tn / (tn + fn) if tn + fn else 0.0, abs=1e-12)
        assert row["brier"] == pytest.approx(brier_score_loss(t, p), abs=1e-12)
        assert row["threshold"] == thr[j]
        for key, value in row.items():
            assert type(value) in (str, int, float), (key, type(value))


def test_hand_checked_tiny_example():
    y_true = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])
    y_prob = np.array([[0.9, 0.2], [0.4, 0.7], [0.6, 0.1], [0.1, 0.3]])
    res = evaluate_multilabel(y_true, y_prob, [0.5, 0.5], findings=("A", "B"))
    a, b = res.per_class
    # A: predicted [1,0,1,0] vs [1,1,0,0]
    assert (a["tp"], a["fp"], a["tn"], a["fn"]) == (1, 1, 1, 1)
    assert (a["precision"], a["recall"], a["f1"]) == (0.5, 0.5, 0.5)
    assert (a["specificity"], a["npv"]) == (0.5, 0.5)
    assert a["auroc"] == pytest.approx(0.75)  # 3 of 4 positive/negative pairs ordered
    assert a["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.01) / 4)
    # B: predicted [0,1,0,0] vs [0,1,0,1]
    assert (b["tp"], b["fp"], b["tn"], b["fn"]) == (1, 0, 2, 1)
    assert (b["precision"], b["recall"]) == (1.0, 0.5)
    assert b["f1"] == pytest.approx(2 / 3)
    assert (b["specificity"], b["npv"]) == (1.0, pytest.approx(2 / 3))
    assert b["auroc"] == 1.0
    agg = res.aggregates
    assert agg["n_studies"] == 4
    assert agg["macro_auroc"] == pytest.approx(0.875)
    assert agg["exact_match"] == 0.25  # only the first row is entirely right
    assert agg["hamming_loss"] == pytest.approx(3 / 8)
    assert agg["accuracy"] == pytest.approx(5 / 8)
    assert agg["micro_f1"] == pytest.approx(4 / 7)  # tp=2, fp=1, fn=2
    assert agg["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_single_label_class_is_excluded_from_auroc(random_problem):
    y_true, y_prob, thr = random_problem
    y_true = y_true.copy()
    y_true[:, 3] = 0
    y_true[:, 7] = 1
    res = evaluate_multilabel(y_true, y_prob, thr)
    for j in (3, 7):
        assert res.per_class[j]["auroc"] is None
        assert res.per_class[j]["pr_auc"] is None
    defined = [roc_auc_score(y_true[:, j], y_prob[:, j]) for j in range(C) if j not in (3, 7)]
    assert res.aggregates["macro_auroc"] == pytest.approx(np.mean(defined), abs=1e-12)
    assert res.per_class[3]["specificity"] == res.per_class[3]["tn"] / 300
    assert res.per_class[7]["specificity"] == 0.0  # no negatives: zero_division=0
    assert epoch_summary(y_true, y_prob)["mean_auroc"] == pytest.approx(np.mean(defined), abs=1e-12)
    curves = roc_curves(y_true, y_prob)
    assert FINDINGS[3] not in curves and FINDINGS[7] not in curves and len(curves) == C - 2


def test_all_classes_single_valued_give_none():
    y_true = np.zeros((5, 3), dtype=int)
    y_prob = np.full((5, 3), 0.2)
    res = evaluate_multilabel(y_true, y_prob, 0.5, findings=("a", "b", "c"))
    assert res.aggregates["macro_auroc"] is None
    assert res.aggregates["micro_auroc"] is None
    assert epoch_summary(y_true, y_prob)["mean_auroc"] is None
    assert roc_curves(y_true, y_prob, findings=("a", "b", "c")) == {}


def test_epoch_summary_matches_sklearn(random_problem):
    y_true, y_prob, thr = random_problem
    for thresholds in (0.5, thr):
        pred = (y_prob >= thresholds).astype(int)
        s = epoch_summary(y_true, y_prob, thresholds)
        assert set(s) == {"mean_precision", "mean_recall", "macro_f1", "mean_auroc"}
        assert s["mean_precision"] == pytest.approx(precision_score(y_true, pred, average="macro", zero_division=0))
        assert s["mean_recall"] == pytest.approx(recall_score(y_true, pred, average="macro", zero_division=0))
        assert s["macro_f1"] == pytest.approx(f1_score(y_true, pred, average="macro", zero_division=0))
        assert s["mean_auroc"] == pytest.approx(roc_auc_score(y_true, y_prob, average="macro"))


def test_roc_curves_match_sklearn(random_problem):
    y_true, y_prob, _ = random_problem
    curves = roc_curves(y_true, y_prob)
    assert list(curves) == list(FINDINGS)
    for j, name in enumerate(FINDINGS):
        fpr, tpr, auc = curves[name]
        ref_fpr, ref_tpr, _ = roc_curve(y_true[:, j], y_prob[:, j])
        np.testing.assert_array_equal(fpr, ref_fpr)
        np.testing.assert_array_equal(tpr, ref_tpr)
        assert auc == pytest.approx(roc_auc_score(y_true[:, j], y_prob[:, j]))


def test_validate_converts_types():
    t, p = validate_multilabel([[True, False]], [[1, 0]])
    assert t.dtype == np.int64 and p.dtype == np.float64
    assert t.tolist() == [[1, 0]] and p.tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize(
    ("y_true", "y_prob", "match"),
    [
        (np.zeros((4, 2)), np.zeros((4, 3)), "does not match"),
        (np.zeros(4), np.zeros(4), "2-D"),
        (np.zeros((0, 2)), np.zeros((0, 2)), "at least one"),
        (np.array([[0, 2]]), np.array([[0.1, 0.2]]), "only 0 and 1"),
        (np.array([[0, np.nan]]), np.array([[0.1, 0.2]]), "only 0 and 1"),
        (np.array([[0, 1]]), np.array([[0.1, 1.2]]), r"\[0, 1\]"),
        (np.array([[0, 1]]), np.array([[-0.1, 0.5]]), r"\[0, 1\]"),
        (np.array([[0, 1]]), np.array([[np.nan, 0.5]]), "NaN"),
        (np.array([["a", "b"]]), np.array([[0.1, 0.5]]), "numeric"),
    ],
)
def test_bad_inputs_raise(y_true, y_prob, match):
    with pytest.raises(ValueError, match=match):
        validate_multilabel(y_true, y_prob)
    with pytest.raises(ValueError, match=match):
        evaluate_multilabel(y_true, y_prob, 0.5)


def test_bad_thresholds_and_findings_raise(random_problem):
    y_true, y_prob, thr = random_problem
    with pytest.raises(ValueError, match="thresholds"):
        evaluate_multilabel(y_true, y_prob, thr[:5])
    with pytest.raises(ValueError, match="thresholds"):
        evaluate_multilabel(y_true, y_prob, np.full(C, 1.5))
    with pytest.raises(ValueError, match="finding names"):
        evaluate_multilabel(y_true, y_prob, thr, findings=FINDINGS[:3])
    with pytest.raises(ValueError, match="thresholds"):
        epoch_summary(y_true, y_prob, np.nan)


def test_apply_thresholds_uses_greater_or_equal():
    out = apply_thresholds([[0.5, 0.49], [0.7, 0.3]], [0.5, 0.3])
    assert out.tolist() == [[1, 1], [1, 1]]
    assert apply_thresholds([[0.5, 0.49]], 0.5).tolist() == [[1, 0]]
