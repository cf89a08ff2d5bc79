"""Which explanations a model version has, and the Grad-CAM of one study: the one place the
evaluation report, the nightly scoring report and the service (``api/``) ask, so a version has
its heat maps and similar cases everywhere or nowhere.

- Grad-CAM explains a network's logit, so only a network's own scores have one. An embedding
  head (k-NN, MLP) scores with a head on the parent network's embedding: a heat map of the
  parent's logit would explain another model's answer, so there is none (a note says why). A
  classical model has no network at all.
- Similar cases are neighbours in a network's embedding space: networks and embedding heads
  have one (the heads share their parent's), a classical model has none.
"""

from __future__ import annotations

import numpy as np
import torch

from cxrmodel.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from cxrmodel.explain.gradcam import grad_cam
from cxrmodel.findings import FINDINGS
from cxrmodel.models.kinds import CLASSICAL_KINDS, EMBEDDING_KINDS, NETWORK_KINDS, has_embedding_space
from cxrmodel.models.loading import LoadedModel

__all__ = ["gradcam_unavailable", "similar_cases_unavailable", "study_gradcam"]


def gradcam_unavailable(kind: str) -> str | None:
    """Why a model of ``kind`` has no Grad-CAM; None when it has one."""
    if kind in NETWORK_KINDS:
        return None
    if kind in EMBEDDING_KINDS:
        return (
            f"No Grad-CAM for the {kind} baseline: its scores come from a head on image embeddings, "
            "not from the network's logits."
        )
    if kind in CLASSICAL_KINDS:
        return f"No Grad-CAM for the {kind} baseline: it has no network (logistic regression on pixels)."
    return f"No Grad-CAM for a model of kind {kind!r}."


def similar_cases_unavailable(kind: str) -> str | None:
    """Why a model of ``kind`` has no similar cases; None when it has an embedding space."""
    return None if has_embedding_space(kind) else f"No similar cases for the {kind} model: it has no image embeddings."


def study_gradcam(loaded: LoadedModel, image: torch.Tensor, patient: torch.Tensor, finding: str) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of ``finding`` for one study, on the model's own input: ``image`` is the
    ``[3, S, S]`` output of :attr:`LoadedModel.input_transform` and ``patient`` the ``[3]``
    patient features. Returns ``(grey, heat)``: the ``[S, S]`` image the network saw,
    un-normalised to ``[0, 1]``, and the ``[S, S]`` heat map in ``[0, 1]``. ``ValueError`` (the
    reason of :func:`gradcam_unavailable`) for a model without one."""
    reason = gradcam_unavailable(loaded.kind)
    if reason is not None:
        raise ValueError(reason)
    heat = grad_cam(loaded.network, image[None], patient.reshape(1, -1), FINDINGS.index(finding))
    grey = image[0].detach().cpu().numpy() * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    return grey, heat
