"""One study at a time, or a few together: what the on-demand scoring service (``cxr api``) asks
of the model, with the same preprocessing, patient features and thresholds as nightly scoring.

:func:`prepare_image` turns decoded grey pixels into the model input exactly as
:class:`cxrmodel.inference.ScoringDataset` does (``resize_square`` then ``eval_transform``);
:func:`predict_with_embeddings` runs one forward pass that yields both the probabilities and the
image embeddings (for similar cases), so a request that asks for similar cases costs no
second pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from cxrmodel.data.imaging import resize_square
from cxrmodel.data.metadata import patient_features
from cxrmodel.data.transforms import eval_transform
from cxrmodel.evaluation.metrics import apply_thresholds
from cxrmodel.findings import FINDINGS
from cxrmodel.models.loading import LoadedModel

__all__ = ["Finding", "patient_vector", "predict_with_embeddings", "prepare_image", "ranked_findings"]


def prepare_image(pixels: np.ndarray, size: int) -> torch.Tensor:
    """``uint8 [H, W] -> float32 [3, size, size]``: the scoring preprocessing."""
    return eval_transform(size)(torch.from_numpy(resize_square(pixels, size))[None])


def patient_vector(loaded: LoadedModel, age: float | None, sex: str | None, view: str | None) -> torch.Tensor:
    """``[3]`` patient features encoded as the model was trained (:func:`patient_features`)."""
    frame = pd.DataFrame({"age": [age], "sex": [sex], "view": [view]})
    return torch.from_numpy(patient_features(frame, loaded.age_scaler)[0])


@torch.no_grad()
def predict_with_embeddings(loaded: LoadedModel, images: torch.Tensor, patient: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``[B, 14]`` and image embeddings ``[B, d]`` of a batch, in one forward pass
    (an embedding baseline's head turns the embeddings into probabilities)."""
    network = loaded.network.eval()
    embeddings = network.embed(images)
    if loaded.embedding_head is not None:
        return loaded.embedding_head.predict_proba(embeddings.float().numpy()), embeddings.float().numpy()
    logits = network.logits_from_embedding(embeddings, patient)
    return torch.sigmoid(logits.float()).numpy(), embeddings.float().numpy()


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
