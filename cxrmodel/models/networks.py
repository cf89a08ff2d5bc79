"""Seed 004's classifier: DenseNet121 backbone, a feature pyramid, and late fusion with
patient features; plus the image-only CheXNet-style baseline.

The seed lists c4 (after ``denseblock3``) as 512 channels; the real torchvision module gives
1024 there (``denseblock3`` ends at 256 + 24 x 32 channels, and only ``transition3`` halves it).
This module follows torchvision: c3 = 512, c4 = 1024, c5 = 1024, and a test pins it.

One builder, :func:`build_model`, composes a backbone with a head. Backbones come one builder
function per variant, as in torchvision: :func:`densenet121_backbone` (the seed's) and
:func:`densenet_small_backbone`, a three-block DenseNet (growth 16, blocks
6/12/8, about 0.5 M parameters against 7 M) for small real sets, where the full DenseNet121
trained from scratch overfits (see ``configs/small-real.yaml``). The pyramid taps the last
three dense blocks of whichever backbone it gets, with their channel counts read from the
module itself.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision.models import DenseNet, densenet121
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
#: The small backbone's shape (torchvision ``DenseNet`` arguments).
SMALL_DENSENET = {"growth_rate": 16, "block_config": (6, 12, 8), "num_init_features": 32}


#: A backbone's initial weights: None (random), ``"imagenet"`` (torchvision's weights API) or
#: the path of a local state-dict file. One value, so no source can be silently ignored.
Weights = str | Path | None


def densenet121_backbone(weights: Weights = None) -> nn.Module:
    """A torchvision DenseNet121 with ``weights``: None, random initialisation; ``"imagenet"``,
    torchvision's ImageNet weights (:func:`~cxrmodel.models.weights.imagenet_densenet121`); a
    path, a local state dict (the whole torchvision one or its ``features.*`` part; legacy key
    names accepted)."""
    if isinstance(weights, str) and weights == "imagenet":
        return imagenet_densenet121()
    net = densenet121(weights=None)
    if weights is not None:
        load_state_dict_file(net, weights)
    return net


def densenet_small_backbone(weights: Weights = None) -> nn.Module:
    """The small three-block DenseNet of :data:`SMALL_DENSENET`: randomly initialised (no
    published weights exist for it), or from a local state-dict file of the same shape."""
    if isinstance(weights, str) and weights == "imagenet":
        raise ValueError("no ImageNet weights exist for the densenet_small backbone; use weights='scratch'")
    net = DenseNet(**SMALL_DENSENET)
    if weights is not None:
        load_state_dict_file(net, weights)
    return net


#: Backbone builders by the recipe's ``backbone`` name.
BACKBONES = {"densenet121": densenet121_backbone, "densenet_small": densenet_small_backbone}
#: FPN width per backbone: the small one's last blocks have 128-256 channels, not 512-1024.
FPN_CHANNELS = {"densenet121": 256, "densenet_small": 128}


def _block_channels(features: nn.Module) -> list[tuple[str, int]]:
    """``(node, output channels)`` of every dense block of a torchvision DenseNet's ``features``:
    a block's output is what the following transition (or ``norm5``) normalises."""
    names = [name for name, _ in features.named_children()]
    blocks = [name for name in names if name.startswith("denseblock")]
    out = []
    for block in blocks:
        follower = features.get_submodule(names[names.index(block) + 1])
        norm = follower.norm if hasattr(follower, "norm") else follower
        out.append((f"features.{block}", int(norm.num_features)))
    return out


def pyramid_levels(densenet: nn.Module) -> OrderedDict[str, tuple[str, int]]:
    """The last three dense blocks of ``densenet`` as ``c3, c4, c5 -> (node, channels)``
    (for DenseNet121 exactly :data:`PYRAMID_LEVELS`)."""
    blocks = _block_channels(densenet.features)
    if len(blocks) < 3:
        raise ValueError(f"the pyramid needs at least 3 dense blocks, this DenseNet has {len(blocks)}")
    return OrderedDict(zip(("c3", "c4", "c5"), blocks[-3:], strict=True))


class DenseBlockTaps(nn.Module):
    """The stem and dense blocks of a DenseNet's ``features``, run in order, returning the outputs
    of the tapped blocks: a plain module in the manner of torchvision's ``IntermediateLayerGetter``
    (no torch.fx tracing, which patches module calls process-wide while it runs and broke
    predictions running in other threads).

    The children after the last tapped block (``norm5``) are left out, so the state-dict keys are
    ``features.<child>.*``, exactly those of the torch.fx extractor this replaces: artefacts saved
    before stay loadable (``tests/fixtures/legacy_networks.json`` pins them).
    """

    def __init__(self, features: nn.Module, taps: dict[str, str]) -> None:
        super().__init__()
        children = list(features.named_children())
        last = max(i for i, (name, _) in enumerate(children) if name in taps)
        self.features = nn.Sequential(OrderedDict(children[: last + 1]))
        self.taps = dict(taps)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, module in self.features.named_children():
            x = module(x)
            if name in self.taps:
                out[self.taps[name]] = x
        return out


class PyramidBackbone(nn.Module):
    """A DenseNet's features tapped after its last three dense blocks.

    DenseNet121 input ``[B, 3, H, W]``; output ``{'c3': [B, 512, H/8, W/8], 'c4': [B, 1024,
    H/16, W/16], 'c5': [B, 1024, H/32, W/32]}`` (``levels`` gives the channels of any DenseNet).
    """

    def __init__(self, densenet: nn.Module) -> None:
        super().__init__()
        self.levels = pyramid_levels(densenet)
        taps = {node.removeprefix("features."): name for name, (node, _) in self.levels.items()}
        self.body = DenseBlockTaps(densenet.features, taps)

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
        levels = getattr(backbone, "levels", PYRAMID_LEVELS)
        self.fpn = FeaturePyramidNetwork(in_channels_list=[ch for _, ch in levels.values()], out_channels=fpn_channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.image_proj = nn.Sequential(nn.Linear(fpn_channels * len(levels), embed_dim), nn.ReLU(inplace=True))
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
        self.classifier = nn.Linear(densenet.classifier.in_features, num_classes)

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, 1024]`` (DenseNet121; the backbone's last width in general)."""
        x = torch.relu(self.features(image))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def logits_from_embedding(self, embedding: torch.Tensor, patient: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, 1024] -> [B, 14]`` (``patient`` is ignored)."""
        return self.classifier(embedding)

    def forward(self, image: torch.Tensor, patient: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits_from_embedding(self.embed(image))


def build_model(
    architecture: str,
    backbone: str = "densenet121",
    weights: Weights = None,
    num_classes: int = NUM_FINDINGS,
    dropout: float | None = None,
) -> nn.Module:
    """A network: the ``backbone`` DenseNet (``'densenet121'``, the default, or
    ``'densenet_small'``; initial ``weights`` as :func:`densenet121_backbone` takes them) under
    the head of ``architecture``:

    - ``'densenet121_fpn'``: seed 004's :class:`DenseNetFPNClassifier` (pyramid, patient fusion,
      dense head with ``dropout``, 0.3 when None), ``[B, 3, H, W], [B, 3] -> [B, num_classes]``;
    - ``'densenet121'``: the CheXNet-style :class:`DenseNetClassifier` (pooled features, one
      linear layer), ``[B, 3, H, W] -> [B, num_classes]``; it has no dropout to set.
    """
    if architecture not in HEADS or backbone not in BACKBONES:
        raise ValueError(
            f"unknown architecture {architecture!r} with backbone {backbone!r}; choose from {sorted(HEADS)} and {sorted(BACKBONES)}"
        )
    if architecture == ModelKind.DENSENET121 and dropout is not None:
        raise ValueError("the CheXNet-style network (densenet121) has no dropout to set")
    densenet = BACKBONES[backbone](weights)
    if architecture == ModelKind.DENSENET121_FPN:
        head = {"fpn_channels": FPN_CHANNELS[backbone], **({"dropout": dropout} if dropout is not None else {})}
        return DenseNetFPNClassifier(PyramidBackbone(densenet), num_classes=num_classes, **head)
    return DenseNetClassifier(densenet, num_classes=num_classes)


#: The heads :func:`build_model` composes with a backbone, by network kind.
HEADS = {ModelKind.DENSENET121_FPN: DenseNetFPNClassifier, ModelKind.DENSENET121: DenseNetClassifier}


def flip_averaged_probabilities(
    model: nn.Module, image: torch.Tensor, patient: torch.Tensor, logits: torch.Tensor | None = None
) -> torch.Tensor:
    """Test-time augmentation: the mean of the sigmoid probabilities of ``image [B, 3, H, W]``
    and of its horizontal mirror; ``logits`` of the unflipped image when already computed."""
    if logits is None:
        logits = model(image, patient)
    mirrored = model(torch.flip(image, dims=[-1]), patient)
    return (torch.sigmoid(logits.float()) + torch.sigmoid(mirrored.float())) / 2


def network_probabilities(
    model: nn.Module, image: torch.Tensor, patient: torch.Tensor, tta_hflip: bool = False, logits: torch.Tensor | None = None
) -> torch.Tensor:
    """``[B, 14]`` sigmoid probabilities of a network, flip-averaged when ``tta_hflip``;
    ``logits`` of the unflipped image when already computed."""
    if tta_hflip:
        return flip_averaged_probabilities(model, image, patient, logits)
    return torch.sigmoid((model(image, patient) if logits is None else logits).float())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
