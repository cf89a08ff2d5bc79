"""DenseNet121 + FPN + patient-feature classifier, the image-only baseline, and weight loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import densenet121

from cxrmodel.config import TrainConfig
from cxrmodel.findings import NUM_FINDINGS
from cxrmodel.models.networks import (
    NUM_PATIENT_FEATURES,
    DenseNetClassifier,
    DenseNetFPNClassifier,
    build_model,
    count_parameters,
    densenet121_backbone,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fpn_model() -> DenseNetFPNClassifier:
    torch.manual_seed(0)
    return build_model("densenet121_fpn").eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def pyramid(fpn_model, image):
    with torch.no_grad():
        return fpn_model.backbone(image)


def test_backbone_channels_and_strides(pyramid):
    assert list(pyramid) == ["c3", "c4", "c5"]
    # channels follow torchvision (c4 = 1024, not the seed's 512); strides 8 / 16 / 32
    assert pyramid["c3"].shape == (2, 512, 8, 8)
    assert pyramid["c4"].shape == (2, 1024, 4, 4)
    assert pyramid["c5"].shape == (2, 1024, 2, 2)


def test_backbone_taps_match_torchvision_blocks(fpn_model, pyramid, image):
    # replay torchvision DenseNet121's feature path by hand on a network with the same
    # weights (same seed); the taps must be denseblock2/3/4 outputs (before transition/norm5)
    torch.manual_seed(0)
    f = densenet121(weights=None).eval().features
    with torch.no_grad():
        x = f.pool0(f.relu0(f.norm0(f.conv0(image))))
        x = f.transition1(f.denseblock1(x))
        c3 = f.denseblock2(x)
        c4 = f.denseblock3(f.transition2(c3))
        c5 = f.denseblock4(f.transition3(c4))
    torch.testing.assert_close(pyramid["c3"], c3)
    torch.testing.assert_close(pyramid["c4"], c4)
    torch.testing.assert_close(pyramid["c5"], c5)


def test_fpn_outputs_256_channels(fpn_model, pyramid):
    with torch.no_grad():
        levels = fpn_model.fpn(pyramid)
    assert [tuple(v.shape) for v in levels.values()] == [(2, 256, 8, 8), (2, 256, 4, 4), (2, 256, 2, 2)]


def test_pooled_pyramid_embed_and_forward(fpn_model, pyramid, image):
    patient = torch.tensor([[0.3, 0.0, 1.0], [0.8, 1.0, 0.0]])
    with torch.no_grad():
        pooled = fpn_model.pooled_pyramid(image)
        embedding = fpn_model.embed(image)
        logits = fpn_model(image, patient)
        # hand-built reference: mean over space of each FPN level, concatenated
        levels = list(fpn_model.fpn(pyramid).values())
        ref_pooled = torch.cat([p.mean(dim=(2, 3)) for p in levels], dim=1)
        ref_embed = torch.relu(fpn_model.image_proj[0](ref_pooled))
        ref_patient = torch.relu(fpn_model.patient_proj[0](patient))
        ref_logits = fpn_model.head(torch.cat([ref_embed, ref_patient], dim=1))
    assert pooled.shape == (2, 768)
    assert embedding.shape == (2, 256)
    assert logits.shape == (2, NUM_FINDINGS) == (2, 14)
    torch.testing.assert_close(pooled, ref_pooled, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(embedding, ref_embed, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
    assert (embedding >= 0).all()


def test_patient_features_change_logits(fpn_model, image):
    a = torch.tensor([[0.2, 0.0, 0.0], [0.2, 0.0, 0.0]])
    b = torch.tensor([[0.9, 1.0, 1.0], [0.9, 1.0, 1.0]])
    with torch.no_grad():
        la1, la2, lb = fpn_model(image, a), fpn_model(image, a), fpn_model(image, b)
    torch.testing.assert_close(la1, la2)  # eval mode: deterministic (dropout off)
    assert (la1 - lb).abs().max() > 1e-4


def test_patient_branch_is_linear_3_to_8(fpn_model):
    first = fpn_model.patient_proj[0]
    assert isinstance(first, nn.Linear)
    assert (first.in_features, first.out_features) == (NUM_PATIENT_FEATURES, 8) == (3, 8)
    assert isinstance(fpn_model.patient_proj[1], nn.ReLU)
    assert fpn_model.head[0].in_features == 256 + 8
    assert fpn_model.head[-1].out_features == 14


def test_dropout_is_configurable():
    model = build_model("densenet121_fpn", dropout=0.1)
    drops = [m for m in model.head if isinstance(m, nn.Dropout)]
    assert [d.p for d in drops] == [0.1]
    # the CheXNet-style head has none: asking for one is refused, not ignored
    with pytest.raises(ValueError, match="no dropout"):
        build_model("densenet121", dropout=0.1)
    assert not any(isinstance(m, nn.Dropout) for m in build_model("densenet121", backbone="densenet_small").modules())
    # a recipe gives its dropout to the architecture that has one only
    assert TrainConfig(dropout=0.2).model_kwargs() == {"backbone": "densenet121", "dropout": 0.2}
    assert TrainConfig(architecture="densenet121", dropout=0.2).model_kwargs() == {"backbone": "densenet121"}


def test_one_weights_source_per_recipe(tmp_path):
    """A weights file next to weights='imagenet' is refused, never silently ignored."""
    with pytest.raises(ValueError, match="pretrained_weights is read with weights='file' only"):
        TrainConfig(weights="imagenet", pretrained_weights=tmp_path / "w.pth")
    assert TrainConfig(pretrained_weights=tmp_path / "w.pth").model_kwargs(with_weights=False) == {
        "backbone": "densenet121",
        "dropout": 0.3,
    }
    assert TrainConfig(pretrained_weights=tmp_path / "w.pth").backbone_kwargs() == {"weights": tmp_path / "w.pth"}


def test_backbone_loads_local_state_dict(tmp_path):
    saved = densenet121(weights=None).state_dict()
    # distinctive values that no random initialisation produces
    saved["features.conv0.weight"] = (
        torch.arange(saved["features.conv0.weight"].numel(), dtype=torch.float32).reshape(saved["features.conv0.weight"].shape)
        / 1000.0
    )
    saved["features.norm5.running_var"] = torch.full_like(saved["features.norm5.running_var"], 3.25)
    path = tmp_path / "densenet121.pth"
    torch.save(saved, path)
    loaded = densenet121_backbone(path).state_dict()
    for key in (
        "features.conv0.weight",
        "features.denseblock3.denselayer7.conv2.weight",
        "features.norm5.running_var",
        "classifier.weight",
    ):
        assert torch.equal(loaded[key], saved[key]), key

    # a features-only file is accepted as well
    features_only = {k: v for k, v in saved.items() if k.startswith("features.")}
    torch.save(features_only, tmp_path / "features.pth")
    via_builder = build_model("densenet121_fpn", weights=tmp_path / "features.pth")
    conv0 = via_builder.backbone.body.state_dict()["features.conv0.weight"]
    assert torch.equal(conv0, saved["features.conv0.weight"])


def test_backbone_rejects_wrong_architecture(tmp_path):
    from torchvision.models import resnet18

    torch.save(resnet18(weights=None).state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="not a DenseNet121"):
        densenet121_backbone(tmp_path / "resnet.pth")

    # a DenseNet121 file with some feature keys missing
    state = densenet121(weights=None).state_dict()
    partial = {k: v for k, v in state.items() if "denseblock4" not in k}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="not a DenseNet121"):
        densenet121_backbone(tmp_path / "partial.pth")

    # same keys, wrong shapes (what another DenseNet depth looks like)
    bad = dict(state)
    bad["features.transition3.conv.weight"] = torch.zeros(10, 10, 1, 1)
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match="not a DenseNet121"):
        densenet121_backbone(tmp_path / "shape.pth")

    # a file holding a bare tensor rather than a state dict
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ValueError, match="not a DenseNet121"):
        densenet121_backbone(tmp_path / "tensor.pth")


def test_build_model_unknown_name():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("resnet50")


def test_build_model_known_names():
    assert isinstance(build_model("densenet121_fpn"), DenseNetFPNClassifier)
    assert isinstance(build_model("densenet121"), DenseNetClassifier)


def test_densenet_classifier_forward(image):
    torch.manual_seed(0)
    model = build_model("densenet121").eval()
    with torch.no_grad():
        logits = model(image, torch.zeros(2, 3))
        same = model(image)  # patient features are ignored
        emb = model.embed(image)
        ref = model.classifier(torch.relu(model.features(image)).mean(dim=(2, 3)))
    assert logits.shape == (2, 14)
    assert emb.shape == (2, 1024)
    torch.testing.assert_close(logits, same)
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-5)


def test_count_parameters(fpn_model):
    assert count_parameters(fpn_model) == sum(p.numel() for p in fpn_model.parameters())
    assert count_parameters(nn.Linear(3, 8)) == 3 * 8 + 8 == 32
    # by hand: DenseNet121 features up to denseblock4 (torchvision's 6,953,856 features
    # minus norm5's 2 x 1024, pruned by the extractor) ...
    assert count_parameters(fpn_model.backbone) == 6_953_856 - 2 * 1024
    # ... FPN: 1x1 laterals 512/1024/1024 -> 256 and three 3x3 256 -> 256 convs, with biases
    fpn = (512 + 1024 + 1024) * 256 + 3 * 256 + 3 * (256 * 256 * 9 + 256)
    assert count_parameters(fpn_model.fpn) == fpn == 2_426_368
    heads = (768 * 256 + 256) + (3 * 8 + 8) + (264 * 128 + 128) + (128 * 14 + 14)
    assert count_parameters(fpn_model) == 6_951_808 + fpn + heads == 9_610_798
