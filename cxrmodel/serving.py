"""One study at a time, or a few together: what the on-demand scoring service (``cxr api``) asks
of the model, with the same preprocessing, patient features and thresholds as nightly scoring.

:func:`prepare_image` turns decoded grey pixels into the model input exactly as
:class:`cxrmodel.inference.ScoringDataset` does (``resize_square`` then the version's
``input_transform``); :func:`predict_with_embeddings` runs the version's own prediction path,
which yields the image embeddings (for similar cases) from the same forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from cxrmodel.data.imaging import resize_square
from cxrmodel.data.metadata import patient_features
from cxrmodel.evaluation.metrics import apply_thresholds
from cxrmodel.findings import FINDINGS
from cxrmodel.models.loading import LoadedModel

__all__ = ["Finding", "patient_vector", "predict_with_embeddings", "prepare_image", "ranked_findings"]


def prepare_image(pixels: np.ndarray, loaded: LoadedModel) -> torch.Tensor:
    """``uint8 [H, W]`` -> the model's input (``float32 [3, S, S]`` for a network, the uint8
    ``[1, S, S]`` image for a classical model): the scoring preprocessing of ``loaded``."""
    return loaded.input_transform(torch.from_numpy(resize_square(pixels, loaded.image_size))[None])


def patient_vector(loaded: LoadedModel, age: float | None, sex: str | None, view: str | None) -> torch.Tensor:
    """``[3]`` patient features encoded as the model was trained (:func:`patient_features`)."""
    frame = pd.DataFrame({"age": [age], "sex": [sex], "view": [view]})
    return torch.from_numpy(patient_features(frame, loaded.age_scaler)[0])


def predict_with_embeddings(
    loaded: LoadedModel, inputs: torch.Tensor, patient: torch.Tensor, device: torch.device | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities ``[B, 14]`` and image embeddings ``[B, d]`` (``None`` for a classical
    model) of a batch of :func:`prepare_image` outputs, through the same
    :meth:`LoadedModel.predict_with_embeddings` that nightly scoring's ``predict_batch`` runs,
    so on-demand and nightly probabilities agree (test-time mirroring included)."""
    return loaded.predict_with_embeddings(inputs, patient, device or torch.device("cpu"))


@dataclass(frozen=True)
class Finding:
    finding: str
    probability: float
    threshold: float
    decision: bool


def ranked_findings(probabilities: np.ndarray, thresholds: tuple[float, ...]) -> list[Finding]:
    """The 14 findings of one study, most probable first, each with its decision at its
    threshold (:func:`cxrmodel.evaluation.metrics.apply_thresholds`, as nightly scoring)."""
    probs = np.asarray(probabilities, dtype=np.float64).reshape(1, -1)
    decisions = apply_thresholds(probs, thresholds)[0]
    rows = [Finding(f, float(p), float(t), bool(d)) for f, p, t, d in zip(FINDINGS, probs[0], thresholds, decisions, strict=True)]
    return sorted(rows, key=lambda r: -r.probability)
