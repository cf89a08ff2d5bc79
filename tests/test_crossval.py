"""Patient folds and cross-validation, checked against scikit-learn and by hand."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrmodel.data.splits import patient_folds
from cxrmodel.evaluation.crossval import cross_validate, paired_difference, supported_macro_auroc
from cxrmodel.findings import FINDINGS


def _frame(n_patients=60, per_patient=3, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for _ in range(per_patient):
            row = {"patient_id": f"P{p}"}
            row.update({f: int(rng.random() < 0.15) for f in FINDINGS})
            rows.append(row)
    return pd.DataFrame(rows)


def test_patient_folds_group_patients_and_cover_every_row():
    df = _frame()
    folds = patient_folds(df, n_folds=5, seed=1)
    assert set(folds.tolist()) == {0, 1, 2, 3, 4}
    assert (df.assign(fold=folds).groupby("patient_id")["fold"].nunique() == 1).all()
    assert np.array_equal(folds, patient_folds(df, n_folds=5, seed=1))
    with pytest.raises(ValueError, match="cannot fill"):
        patient_folds(df.head(6), n_folds=5)


def test_supported_macro_auroc_matches_sklearn_on_the_findings_it_keeps():
    rng = np.random.default_rng(0)
    y = np.zeros((40, len(FINDINGS)), dtype=int)
    y[:10, 0] = 1  # 10 positives: kept
    y[:3, 1] = 1  # 3 positives: dropped at min_positives=5
    p = rng.random(y.shape)
    score, used = supported_macro_auroc(y, p, min_positives=5)
    assert used == (FINDINGS[0],)
    assert score == pytest.approx(roc_auc_score(y[:, 0], p[:, 0]))
    assert supported_macro_auroc(np.zeros_like(y), p) == (None, ())


def test_cross_validate_scores_each_fold_and_pairs_differences():
    df = _frame(seed=3)
    y = df[list(FINDINGS)].to_numpy()
    folds = patient_folds(df, n_folds=3, seed=0)
    oracle = cross_validate(lambda tr, te: y[te] * 0.8 + 0.1, y, folds, min_positives=3)
    noise = np.random.default_rng(1).random(y.shape)
    chance = cross_validate(lambda tr, te: noise[te], y, folds, min_positives=3)
    assert oracle.fold_scores == (1.0, 1.0, 1.0)
    assert oracle.mean == 1.0 and oracle.std == 0.0
    assert np.array_equal(oracle.out_of_fold, y * 0.8 + 0.1)
    mean, std = paired_difference(oracle, chance)
    assert mean == pytest.approx(1.0 - chance.mean)
    assert std == pytest.approx(chance.std)
    with pytest.raises(ValueError, match="fit_predict returned"):
        cross_validate(lambda tr, te: np.zeros((len(te), 2)), y, folds)
