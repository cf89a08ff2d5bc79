"""The classical baseline: one logistic regression per finding on downsampled pixels plus the
patient features (age, sex, view).

On small real sets this simple model is a strong reference (on 690 real NIH images it beats a
DenseNet trained from scratch), so it is a full candidate: trained, calibrated, evaluated,
stored and, when it ranks first on validation, served like any other model version.

Input: the same ``uint8 [S, S]`` images the networks see (the image cache at the model's input
size), shrunk to ``side x side`` with :func:`cxrmodel.data.imaging.resize_square`, scaled to
[0, 1]; then the three patient features of :func:`cxrmodel.data.metadata.patient_features`.
Features are standardised with the training mean and standard deviation. A finding with a
single label value in training gets a constant probability (its training prevalence).

Stored as a plain ``.npz`` (no pickle): coefficients, intercepts, the standardisation and the
constants, checked against its sha256 on load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from cxrmodel.data.imaging import resize_square
from cxrmodel.io import atomic_write, sha256_file
from cxrmodel.models.artifacts import ArtifactIntegrityError

DEFAULT_SIDE = 32
DEFAULT_C = 0.01


def pixel_features(images: np.ndarray, patient: np.ndarray, side: int = DEFAULT_SIDE) -> np.ndarray:
    """``[N, side*side + 3]`` float32 features: shrunk pixels in [0, 1], then the patient features.

    ``images`` is ``uint8 [N, S, S]`` (any ``S``), ``patient`` is ``[N, 3]``."""
    images = np.asarray(images)
    patient = np.asarray(patient, dtype=np.float32)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, S, S], got {images.dtype} {images.shape}")
    if patient.shape != (len(images), 3):
        raise ValueError(f"patient features must be [{len(images)}, 3], got {patient.shape}")
    small = np.stack([resize_square(img, side) for img in images]) if images.shape[1:] != (side, side) else images
    pixels = small.reshape(len(images), -1).astype(np.float32) / 255.0
    return np.concatenate([pixels, patient], axis=1)


@dataclass
class PixelLogisticModel:
    """Per-finding logistic regressions; ``coef [C, d]``, ``intercept [C]``; ``constant[j]``
    is the probability of a finding without a model (NaN where there is one)."""

    side: int
    c: float
    mean: np.ndarray
    std: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    constant: np.ndarray

    @classmethod
    def fit(
        cls,
        images: np.ndarray,
        patient: np.ndarray,
        labels: np.ndarray,
        *,
        side: int = DEFAULT_SIDE,
        c: float = DEFAULT_C,
        max_iter: int = 2000,
    ) -> PixelLogisticModel:
        """Fit one L2-penalised logistic regression (inverse strength ``c``, balanced class
        weights) per column of ``labels [N, C]``."""
        if c <= 0:
            raise ValueError(f"c must be positive, got {c}")
        features = pixel_features(images, patient, side)
        labels = np.asarray(labels)
        if labels.shape[0] != len(features) or labels.ndim != 2:
            raise ValueError(f"labels must be [{len(features)}, C], got {labels.shape}")
        mean, std = features.mean(axis=0), features.std(axis=0)
        std = np.where(std > 1e-6, std, 1.0).astype(np.float32)
        z = (features - mean) / std
        n_classes = labels.shape[1]
        coef = np.zeros((n_classes, z.shape[1]), dtype=np.float32)
        intercept = np.zeros(n_classes, dtype=np.float32)
        constant = np.full(n_classes, np.nan, dtype=np.float32)
        for j in range(n_classes):
            y = labels[:, j].astype(int)
            if y.min() == y.max():
                constant[j] = float(y.mean())
                continue
            model = LogisticRegression(C=c, class_weight="balanced", max_iter=max_iter).fit(z, y)
            coef[j], intercept[j] = model.coef_[0], model.intercept_[0]
        return cls(side, float(c), mean.astype(np.float32), std, coef, intercept, constant)

    def predict_proba(self, images: np.ndarray, patient: np.ndarray) -> np.ndarray:
        """``[N, C]`` probabilities."""
        z = (pixel_features(images, patient, self.side) - self.mean) / self.std
        logits = z @ self.coef.T + self.intercept
        probs = 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))
        fixed = ~np.isnan(self.constant)
        probs[:, fixed] = self.constant[fixed]
        return probs.astype(np.float32)

    @property
    def parameter_count(self) -> int:
        return int(self.coef.size + self.intercept.size)

    def save(self, path: str | Path) -> str:
        """Write the model as an ``.npz`` atomically; return the file's sha256."""
        arrays = {
            "side": np.array(self.side),
            "c": np.array(self.c),
            "mean": self.mean,
            "std": self.std,
            "coef": self.coef,
            "intercept": self.intercept,
            "constant": self.constant,
        }
        return sha256_file(atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays)))

    @classmethod
    def load(cls, path: str | Path, expected_sha256: str | None) -> PixelLogisticModel:
        """Rebuild from :meth:`save`'s file; :class:`ArtifactIntegrityError` when the sha256 differs."""
        if expected_sha256 is not None and sha256_file(path) != expected_sha256:
            raise ArtifactIntegrityError(f"{path}: sha256 does not match the registry")
        with np.load(path, allow_pickle=False) as f:
            return cls(int(f["side"]), float(f["c"]), f["mean"], f["std"], f["coef"], f["intercept"], f["constant"])
