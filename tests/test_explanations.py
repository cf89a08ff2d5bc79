"""One answer to "which explanations does this version have" (cxrmodel.explain.explanations),
asked by the evaluation report, the nightly scoring report and the service alike; and the
Grad-CAM of one study drawn on the model's own input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrmodel.data.metadata import AgeScaler
from cxrmodel.explain.explanations import gradcam_unavailable, similar_cases_unavailable, study_gradcam
from cxrmodel.models.kinds import ModelKind
from cxrmodel.models.loading import LoadedModel
from cxrmodel.models.networks import build_model

SCALER = AgeScaler(0.0, 100.0, 50.0)


def test_which_kinds_have_which_explanations():
    has_gradcam = {k for k in ModelKind if gradcam_unavailable(k) is None}
    has_similar = {k for k in ModelKind if similar_cases_unavailable(k) is None}
    assert has_gradcam == {ModelKind.DENSENET121_FPN, ModelKind.DENSENET121}
    assert has_similar == set(ModelKind) - {ModelKind.PIXEL_LOGISTIC}
    assert "head on image embeddings" in gradcam_unavailable(ModelKind.MLP_EMBEDDING)
    assert "no network" in gradcam_unavailable(ModelKind.PIXEL_LOGISTIC)
    assert "no image embeddings" in similar_cases_unavailable(ModelKind.PIXEL_LOGISTIC)


@pytest.mark.parametrize("kind", [ModelKind.DENSENET121_FPN, ModelKind.DENSENET121])
def test_study_gradcam_on_the_models_input(kind):
    torch.manual_seed(0)
    loaded = LoadedModel(1, kind, build_model(kind, backbone="densenet_small").eval(), 32, SCALER)
    pixels = np.full((1, 32, 32), 128, dtype=np.uint8)
    pixels[:, 8:20, 10:24] = 230  # some structure for the map to follow
    image = loaded.input_transform(torch.from_numpy(pixels))
    grey, heat = study_gradcam(loaded, image, torch.tensor([0.4, 1.0, 0.0]), "Effusion")
    assert grey.shape == heat.shape == (32, 32)
    # the grey image is the network's input un-normalised back to [0, 1] (the background 128/255)
    assert grey[0, 0] == pytest.approx(128 / 255, abs=1e-5) and grey.max() == pytest.approx(230 / 255, abs=1e-2)
    assert heat.min() >= 0.0 and heat.max() in (0.0, pytest.approx(1.0))  # divided by its peak, or all zero


def test_an_embedding_head_has_no_gradcam_of_its_parent():
    network = build_model(ModelKind.DENSENET121_FPN, backbone="densenet_small").eval()
    head = LoadedModel(2, ModelKind.MLP_EMBEDDING, network, 32, SCALER, embedding_head=object())
    with pytest.raises(ValueError, match="head on image embeddings"):
        study_gradcam(head, torch.zeros(3, 32, 32), torch.zeros(3), "Effusion")
