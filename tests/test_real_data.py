"""bench/real_data.py on the real NIH dev images, tiny: 2 patient folds over a subset, one
epoch. The pixel-logistic reference it reports is recomputed here straight with scikit-learn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from bench import real_data
from cxrmodel.data.imaging import resize_square
from cxrmodel.data.metadata import AgeScaler, labels_matrix, patient_features
from cxrmodel.data.splits import patient_folds
from cxrmodel.findings import FINDINGS

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def dev_set(tmp_path_factory):
    if not (real_data.DATA_DIR / "Data_Entry_2017_v2020.csv").is_file():
        pytest.skip("data/real-dev is not in this checkout")
    cache = tmp_path_factory.mktemp("cache")
    frame, images = real_data.load_dev_set(real_data.DATA_DIR, cache, 64)
    return frame, images, cache


def test_dev_set_reads_through_the_project(dev_set):
    frame, images, _ = dev_set
    assert len(frame) == 690 and frame["patient_id"].nunique() == 249
    assert images.shape == (690, 64, 64) and images.dtype == np.uint8
    assert labels_matrix(frame).sum() > 0 and set(frame["split"]) <= {"train", "val", "test"}


def _sklearn_reference(frame, images, fit_rows, test_rows) -> float | None:
    """Per-finding LogisticRegression(C=0.01, balanced) on standardised 32 px pixels + patient features."""
    scaler = AgeScaler.fit(frame.iloc[fit_rows]["age"])

    def features(rows):
        pixels = np.stack([resize_square(img, 32) for img in images[rows]]).reshape(len(rows), -1) / 255.0
        return np.concatenate([pixels, patient_features(frame.iloc[rows], scaler)], axis=1)

    standard = StandardScaler().fit(features(fit_rows))
    x_fit, x_test = standard.transform(features(fit_rows)), standard.transform(features(test_rows))
    y_fit, y_test = labels_matrix(frame.iloc[fit_rows]), labels_matrix(frame.iloc[test_rows])
    scores = []
    for j in range(len(FINDINGS)):
        if y_test[:, j].sum() < real_data.MIN_POSITIVES or y_test[:, j].all():
            continue
        if y_fit[:, j].min() == y_fit[:, j].max():
            probs = np.full(len(test_rows), y_fit[:, j].mean())
        else:
            model = LogisticRegression(C=0.01, class_weight="balanced", max_iter=2000).fit(x_fit, y_fit[:, j])
            probs = model.predict_proba(x_test)[:, 1]
        scores.append(roc_auc_score(y_test[:, j], probs))
    return float(np.mean(scores)) if scores else None


def test_tiny_cross_validation_and_the_reference(dev_set, tmp_path):
    frame, images, cache = dev_set
    patients = sorted(frame["patient_id"].unique())[:120]
    keep = frame["patient_id"].isin(patients).to_numpy()
    subset, subset_images = frame[keep].reset_index(drop=True), images[keep]
    config = real_data.bench_config(epochs=1, chexnet_epochs=1)
    results, notes = real_data.cross_validate_candidates(
        subset, subset_images, ("seed004", "seed004_tta", "pixel_logistic"), config, cache, n_folds=2
    )
    assert len(notes) == 2 and all(n["n_train"] + n["n_val"] + n["n_test"] == len(subset) for n in notes)
    assert all(len(n["seed004_val_auroc_by_epoch"]) == 1 and "retrieval" in n for n in notes)

    folds = patient_folds(subset, n_folds=2, seed=0)
    for fold, score in enumerate(results["pixel_logistic"].fold_scores):
        train_index, test_index = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        rows = real_data.fold_training_frame(subset, train_index, config.data.val_fraction, seed=0)
        fit_rows = train_index[(rows["split"] == "train").to_numpy()]
        expected = _sklearn_reference(subset, subset_images, fit_rows, test_index)
        assert score == pytest.approx(expected, abs=1e-4)
    # the network candidates predicted every held-out study
    for name in ("seed004", "seed004_tta"):
        assert not np.isnan(results[name].out_of_fold).any()
    assert not np.allclose(results["seed004"].out_of_fold, results["seed004_tta"].out_of_fold)

    summary = real_data.summarise(results, notes, real_data.REFERENCE)
    assert summary["seed004"]["diff_mean"] == pytest.approx(
        np.mean([a - b for a, b in zip(results["seed004"].fold_scores, results["pixel_logistic"].fold_scores, strict=True)])
    )
    assert 0 <= summary["retrieval_p_at_5"]["random"] <= 1
    json.dumps(summary)  # the bench writes it as JSON


def test_bench_command_line_rejects_unknown_candidates(capsys):
    with pytest.raises(SystemExit):
        real_data.main(["--candidates", "resnet"])
    assert "unknown candidate" in capsys.readouterr().err


def test_bench_is_in_run_all():
    from bench import run_all

    assert "real_data.py" in run_all.SCRIPTS
    assert Path(real_data.__file__).name == "real_data.py"
