"""Grad-CAM heat maps for our classifiers, computed with :class:`captum.attr.LayerGradCam`.

Which layer:

- :class:`~cxrmodel.models.networks.DenseNetClassifier` (the CheXNet-style baseline): ``model.features``,
  the output of the last dense block after ``norm5`` (stride 32), as in CheXNet.
- :class:`~cxrmodel.models.networks.DenseNetFPNClassifier` (seed 004): the head does not read the
  backbone's last block alone but the three pyramid outputs P3, P4, P5 (``model.fpn.layer_blocks``, strides 8/16/32), each pooled and
  concatenated, so the score is linear in the channels of all three levels together. The map is
  therefore the Grad-CAM sum over those three layers: each level's un-rectified map
  ``sum_k alpha_k A_k`` is upsampled to the input size, the three are added, then rectified —
  Grad-CAM over the concatenated channels of the pyramid.

Any other model needs ``layer=`` (a module, or a sequence of modules whose maps are summed).
The result is a ``[S, S]`` float array in ``[0, 1]`` (divided by its maximum); all zeros when no
location speaks for the class (the rectified map is zero everywhere).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from cxrmodel.models.networks import NUM_PATIENT_FEATURES, DenseNetClassifier, DenseNetFPNClassifier

__all__ = ["default_gradcam_layers", "grad_cam"]


def default_gradcam_layers(model: nn.Module) -> list[nn.Module]:
    """The layer(s) Grad-CAM reads for one of our models (see the module docstring)."""
    if isinstance(model, DenseNetFPNClassifier):
        return list(model.fpn.layer_blocks)
    if isinstance(model, DenseNetClassifier):
        return [model.features]
    raise TypeError(f"no default Grad-CAM layer for {type(model).__name__}; pass layer=")


def _forward(model: nn.Module, with_patient: bool):
    if with_patient:
        return lambda image, patient: model(image, patient)
    return lambda image: model(image)


def grad_cam(
    model: nn.Module,
    image: torch.Tensor,
    patient: torch.Tensor | None,
    class_index: int,
    layer: nn.Module | Sequence[nn.Module] | None = None,
) -> np.ndarray:
    """Grad-CAM of logit ``class_index`` for one image, upsampled (bilinear) to the input size.

    ``image`` is the model input ``[1, 3, S, S]`` (already transformed); ``patient`` the
    ``[1, 3]`` patient features of models that take them (``None`` gives zeros: minimum
    training age, male, PA). The model is run in eval mode (restored afterwards) on the device
    of its parameters. Returns float32 ``[S, S]`` in ``[0, 1]``.
    """
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be [1, 3, H, W]; got {tuple(image.shape)}")
    layers = default_gradcam_layers(model) if layer is None else ([layer] if isinstance(layer, nn.Module) else list(layer))
    if not layers:
        raise ValueError("layer must name at least one module")
    device = next(model.parameters()).device
    image = image.detach().to(device, torch.float32)
    with_patient = isinstance(model, DenseNetFPNClassifier) or patient is not None
    args = None
    if with_patient:
        if patient is None:
            patient = torch.zeros(1, NUM_PATIENT_FEATURES)
        args = (patient.detach().to(device, torch.float32).reshape(1, -1),)
    forward = _forward(model, with_patient)
    size = tuple(image.shape[-2:])
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            total = torch.zeros((1, 1, *size), device=device)
            for module in layers:
                attr = LayerGradCam(forward, module).attribute(
                    image, target=int(class_index), additional_forward_args=args, relu_attributions=False
                )
                total = total + LayerAttribution.interpolate(attr.detach(), size, interpolate_mode="bilinear")
    finally:
        model.train(was_training)
    heat = torch.relu(total)[0, 0].float().cpu().numpy()
    peak = float(heat.max())
    if not np.isfinite(peak) or peak <= 0.0:
        return np.zeros(size, dtype=np.float32)
    return np.clip(heat / peak, 0.0, 1.0).astype(np.float32)
