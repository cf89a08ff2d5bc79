"""Grad-CAM (cxrmodel.explain.gradcam): shape and range on our two networks, and that the map follows
a localised signal on a small model whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cxrmodel.explain.gradcam import default_gradcam_layers, grad_cam
from cxrmodel.models.networks import build_model

SIZE = 64


def _image(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, SIZE, SIZE, generator=g)
    x[..., 8:24, 36:56] += 2.5  # some structure, so the map has something to follow
    return x


@pytest.fixture(scope="module", params=["densenet121_fpn", "densenet121"])
def network(request):
    torch.manual_seed(0)
    return request.param, build_model(request.param).eval()


def test_map_has_input_size_unit_range_and_is_not_constant(network):
    kind, model = network
    patient = torch.tensor([[0.5, 1.0, 0.0]]) if kind == "densenet121_fpn" else None
    heat = grad_cam(model, _image(), patient, class_index=3)
    assert heat.shape == (SIZE, SIZE) and heat.dtype == np.float32
    assert np.isfinite(heat).all()
    assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)
    assert heat.std() > 0.01, "a constant map says nothing"


def test_default_layers_and_mode_restored(network):
    kind, model = network
    layers = default_gradcam_layers(model)
    assert len(layers) == (3 if kind == "densenet121_fpn" else 1)
    model.train()
    try:
        grad_cam(model, _image(1), None, class_index=0)  # FPN: patient None -> zeros
        assert model.training, "the caller's train/eval mode is restored"
    finally:
        model.eval()
    assert all(p.grad is None for p in model.parameters()), "no gradients left on the weights"


class BrightnessNet(nn.Module):
    """Logit 0 grows with local brightness, logit 1 falls with it (known answer for Grad-CAM)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=4, stride=4)  # 64 -> 16: the map must be upsampled
        nn.init.constant_(self.conv.weight, 1.0 / 48)
        nn.init.zeros_(self.conv.bias)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0] * 4, [-1.0] * 4]))
            self.fc.bias.zero_()

    def forward(self, image, patient=None):
        return self.fc(torch.relu(self.conv(image)).mean(dim=(2, 3)))


def test_map_follows_a_localised_bright_patch():
    model = BrightnessNet()
    x = torch.zeros(1, 3, SIZE, SIZE)
    x[..., 40:56, 8:24] = 1.0  # bottom-left patch
    heat = grad_cam(model, x, None, class_index=0, layer=model.conv)
    inside = heat[40:56, 8:24].mean()
    outside = np.delete(heat.ravel(), np.ravel_multi_index(np.mgrid[40:56, 8:24].reshape(2, -1), heat.shape)).mean()
    assert inside > 0.8 and outside < 0.1, (inside, outside)
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    assert 36 <= peak[0] < 60 and 4 <= peak[1] < 28  # not transposed or flipped
    # a class that the patch argues against has nothing to show: an all-zero map, not NaN
    assert not grad_cam(model, x, None, class_index=1, layer=model.conv).any()


def test_bad_input_is_rejected():
    model = BrightnessNet()
    with pytest.raises(ValueError, match=r"\[1, 3, H, W\]"):
        grad_cam(model, torch.zeros(2, 3, 8, 8), None, 0, layer=model.conv)
    with pytest.raises(TypeError, match="layer="):
        grad_cam(model, torch.zeros(1, 3, 8, 8), None, 0)
