"""The classical baseline (per-finding logistic regression on downsampled pixels and patient
features), checked against scikit-learn fitted by hand on the same features."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from cxrmodel.models.artifacts import ArtifactIntegrityError
from cxrmodel.models.classical import PixelLogisticModel, pixel_features


def _data(n=120, size=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    patient = np.column_stack([rng.random(n), rng.integers(0, 2, n), rng.integers(0, 2, n)]).astype(np.float32)
    signal = images[:, :4, :4].mean(axis=(1, 2)) / 255.0 + 0.5 * patient[:, 1]
    labels = np.zeros((n, 3), dtype=int)
    labels[:, 0] = signal > np.median(signal)
    labels[:, 1] = rng.random(n) < 0.3
    labels[:, 2] = 0  # one label value only
    return images, patient, labels


def test_features_are_shrunk_pixels_then_patient_features():
    images, patient, _ = _data(n=4, size=16)
    features = pixel_features(images, patient, side=8)
    assert features.shape == (4, 8 * 8 + 3)
    assert features[:, :64].min() >= 0 and features[:, :64].max() <= 1
    np.testing.assert_array_equal(features[:, 64:], patient)
    with pytest.raises(ValueError, match="uint8"):
        pixel_features(images.astype(float), patient)


def test_matches_sklearn_on_standardised_features_and_learns_the_signal():
    images, patient, labels = _data()
    model = PixelLogisticModel.fit(images, patient, labels, side=8, c=0.5)
    probs = model.predict_proba(images, patient)
    z = pixel_features(images, patient, 8)
    std = z.std(axis=0)
    z = (z - z.mean(axis=0)) / np.where(std > 1e-6, std, 1.0)
    reference = LogisticRegression(C=0.5, class_weight="balanced", max_iter=2000).fit(z, labels[:, 0]).predict_proba(z)[:, 1]
    np.testing.assert_allclose(probs[:, 0], reference, atol=1e-4)
    assert roc_auc_score(labels[:, 0], probs[:, 0]) > 0.9
    assert np.allclose(probs[:, 2], 0.0)  # a finding never positive in training: its prevalence


def test_round_trip_and_tamper_refusal(tmp_path):
    images, patient, labels = _data()
    model = PixelLogisticModel.fit(images, patient, labels, side=8)
    sha = model.save(tmp_path / "m.npz")
    again = PixelLogisticModel.load(tmp_path / "m.npz", sha)
    np.testing.assert_array_equal(again.predict_proba(images, patient), model.predict_proba(images, patient))
    assert again.side == 8 and again.parameter_count == 3 * (64 + 3) + 3
    (tmp_path / "m.npz").write_bytes((tmp_path / "m.npz").read_bytes() + b"x")
    with pytest.raises(ArtifactIntegrityError):
        PixelLogisticModel.load(tmp_path / "m.npz", sha)
