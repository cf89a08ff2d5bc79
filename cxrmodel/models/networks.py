"""Seed 004's classifier: DenseNet121 backbone, a feature pyramid, and late fusion with
patient features; plus the image-only CheXNet-style baseline.

The seed lists c4 (after ``denseblock3``) as 512 channels; the real torchvision module gives
1024 there (``denseblock3`` ends at 256 + 24 x 32 channels, and only ``transition3`` halves it).
This module follows torchvision: c3 = 512, c4 = 1024, c5 = 1024, and a test pins it.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision.models import densenet121
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops import FeaturePyramidNetwork

from cxrmodel.findings import NUM_FINDINGS
from cxrmodel.models.kinds import ModelKind
from cxrmodel.models.weights import imagenet_densenet121, load_state_dict_file

#: DenseNet121 blocks tapped for the pyramid, with their channel counts in torchvision.
PYRAMID_LEVELS: OrderedDict[str, tuple[str, int]] = OrderedDict(
    c3=("features.denseblock2", 512),
    c4=("features.denseblock3", 1024),
    c5=("features.denseblock4", 1024),
)
NUM_PATIENT_FEATURES = 3  # age scaled to [0, 1], sex (M=0, F=1), view (PA=0, AP=1)


def densenet121_backbone(weights_path: str | Path | None = None, imagenet: bool = False) -> nn.Module:
    """A torchvision DenseNet121: ImageNet weights (torchvision's weights API) when ``imagenet``,
    else from a local state-dict file when given, else random initialisation.

    ``weights_path`` may hold either the whole torchvision state dict (``classifier.*``
    included) or only its ``features.*`` part; legacy key names are accepted.
    """
    if imagenet:
        return imagenet_densenet121()
    net = densenet121(weights=None)
    if weights_path is not None:
        load_state_dict_file(net, weights_path)
    return net


class PyramidBackbone(nn.Module):
    """DenseNet121 features tapped after denseblock2/3/4.

    Input ``[B, 3, H, W]``; output ``{'c3': [B, 512, H/8, W/8], 'c4': [B, 1024, H/16, W/16],
    'c5': [B, 1024, H/32, W/32]}``.
    """

    def __init__(self, densenet: nn.Module) -> None:
        super().__init__()
        return_nodes = {node: name for name, (node, _) in PYRAMID_LEVELS.items()}
        self.body = create_feature_extractor(densenet, return_nodes=return_nodes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.body(x)


class DenseNetFPNClassifier(nn.Module):
    """Image + patient-feature multi-label classifier of seed 004.

    ``forward(image [B, 3, H, W], patient [B, 3]) -> logits [B, 14]``.

    Path: backbone pyramid (c3, c4, c5) -> FPN (1x1 laterals to 256, nearest top-down, 3x3
    smoothing: P3, P4, P5) -> global average pool each -> concat [B, 768] -> Linear+ReLU
    [B, 256]; patient [B, 3] -> Linear+ReLU [B, 8]; concat [B, 264] -> dense head with
    dropout -> [B, 14].
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = NUM_FINDINGS,
        fpn_channels: int = 256,
        embed_dim: int = 256,
        patient_dim: int = 8,
        hidden_dim: int = 128,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.fpn = FeaturePyramidNetwork(in_channels_list=[ch for _, ch in PYRAMID_LEVELS.values()], out_channels=fpn_channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.image_proj = nn.Sequential(nn.Linear(fpn_channels * len(PYRAMID_LEVELS), embed_dim), nn.ReLU(inplace=True))
        self.patient_proj = nn.Sequential(nn.Linear(NUM_PATIENT_FEATURES, patient_dim), nn.ReLU(inplace=True))
        self.head = nn.Sequential(
            nn.Linear(embed_dim + patient_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        )

    def pooled_pyramid(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, 768]``: P3, P4, P5 pooled to 1x1 and concatenated."""
        pyramid = self.fpn(self.backbone(image))
        return torch.cat([self.pool(p).flatten(1) for p in pyramid.values()], dim=1)

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, 256]``: the image embedding used for baselines and retrieval."""
        return self.image_proj(self.pooled_pyramid(image))

    def logits_from_embedding(self, embedding: torch.Tensor, patient: torch.Tensor) -> torch.Tensor:
        """``[B, 256], [B, 3] -> [B, 14]``: the rest of :meth:`forward` after :meth:`embed`."""
        return self.head(torch.cat([embedding, self.patient_proj(patient)], dim=1))

    def forward(self, image: torch.Tensor, patient: torch.Tensor) -> torch.Tensor:
        return self.logits_from_embedding(self.embed(image), patient)


class DenseNetClassifier(nn.Module):
    """CheXNet-style image-only baseline: DenseNet121 features -> pooled 1024 -> 14 logits.

    ``forward(image [B, 3, H, W], patient [B, 3] (ignored)) -> logits [B, 14]``.
    """

    def __init__(self, densenet: nn.Module, num_classes: int = NUM_FINDINGS) -> None:
        super().__init__()
        self.features = densenet.features
        self.classifier = nn.Linear(1024, num_classes)

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, 1024]``."""
        x = torch.relu(self.features(image))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def logits_from_embedding(self, embedding: torch.Tensor, patient: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, 1024] -> [B, 14]`` (``patient`` is ignored)."""
        return self.classifier(embedding)

    def forward(self, image: torch.Tensor, patient: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits_from_embedding(self.embed(image))


def densenet121_fpn(
    weights_path: str | Path | None = None, num_classes: int = NUM_FINDINGS, dropout: float = 0.3, imagenet: bool = False
) -> DenseNetFPNClassifier:
    """Seed 004's model with a DenseNet121 backbone (ImageNet or local-file weights when asked)."""
    return DenseNetFPNClassifier(
        PyramidBackbone(densenet121_backbone(weights_path, imagenet)), num_classes=num_classes, dropout=dropout
    )


def densenet121_chexnet(
    weights_path: str | Path | None = None, num_classes: int = NUM_FINDINGS, dropout: float = 0.0, imagenet: bool = False
) -> DenseNetClassifier:
    """The CheXNet-style image-only baseline."""
    return DenseNetClassifier(densenet121_backbone(weights_path, imagenet), num_classes=num_classes)


ARCHITECTURES = {ModelKind.DENSENET121_FPN: densenet121_fpn, ModelKind.DENSENET121: densenet121_chexnet}


def build_model(architecture: str, **kwargs) -> nn.Module:
    """Builder lookup by network kind (``'densenet121_fpn'`` or ``'densenet121'``)."""
    try:
        builder = ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(f"unknown architecture {architecture!r}; choose from {sorted(ARCHITECTURES)}") from None
    return builder(**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
