"""Backbone initialisation sources: local files (new and legacy key names) and the Hugging
Face Hub through a pre-populated cache, offline."""

from __future__ import annotations

import hashlib
import os

import huggingface_hub.constants as hf_constants
import pytest
import torch
from torchvision.models import densenet121

from cxrmodel.config import TrainConfig
from cxrmodel.models.networks import build_model
from cxrmodel.models.weights import normalise_densenet_keys

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def reference_state():
    torch.manual_seed(7)
    return densenet121(weights=None).state_dict()


def _legacy(state):
    """Rename keys the way pre-0.3 torchvision checkpoints spell them (``norm.1``)."""
    out = {}
    for key, value in state.items():
        for part in ("norm1", "norm2", "conv1", "conv2"):
            token = f".{part}."
            if "denselayer" in key and token in key:
                key = key.replace(token, f".{part[:-1]}.{part[-1]}.")
        out[key] = value
    return out


def test_legacy_keys_are_renamed(reference_state):
    legacy = _legacy(reference_state)
    assert any(".norm.1." in k for k in legacy)
    assert normalise_densenet_keys(legacy).keys() == reference_state.keys()


def test_file_weights_legacy_format_load(tmp_path, reference_state):
    path = tmp_path / "legacy.pth"
    torch.save(_legacy(reference_state), path)
    config = TrainConfig(weights="file", pretrained_weights=path)
    model = build_model("densenet121_fpn", **config.backbone_kwargs())
    loaded = model.backbone.body.state_dict()
    key = "features.denseblock1.denselayer1.norm1.weight"
    assert torch.equal(loaded[key], reference_state[key])


def test_weights_validation():
    with pytest.raises(ValueError, match="needs pretrained_weights"):
        TrainConfig(weights="file")
    with pytest.raises(ValueError, match="needs weights_hub_repo"):
        TrainConfig(weights="hub")
    assert TrainConfig(pretrained_weights="x.pth").weights == "file"
    assert TrainConfig().backbone_kwargs() == {}


def test_hub_weights_from_prepopulated_cache_offline(tmp_path, monkeypatch, reference_state):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    path = tmp_path / "w.pth"
    torch.save(reference_state, path)
    data = path.read_bytes()
    repo = tmp_path / "hf" / "models--acme--densenet121-imagenet"
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    commit = "a" * 40
    snapshot = repo / "snapshots" / commit / "densenet121.pth"
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    config = TrainConfig(
        weights="hub",
        weights_hub_repo="acme/densenet121-imagenet",
        weights_hub_revision="main",
        weights_hub_cache_dir=str(tmp_path / "hf"),
    )
    model = build_model("densenet121", **config.backbone_kwargs())
    key = "features.conv0.weight"
    assert torch.equal(model.features.state_dict()[key.removeprefix("features.")], reference_state[key])

    missing = TrainConfig(weights="hub", weights_hub_repo="acme/not-cached", weights_hub_cache_dir=str(tmp_path / "hf"))
    with pytest.raises(Exception, match="(?i)offline|cache|not found"):
        missing.backbone_kwargs()


def test_imagenet_weights_load_offline_from_torchvision_cache(tmp_path, monkeypatch, reference_state):
    """weights='imagenet' reads torchvision's cache file, written here in its format, with the
    network unreachable."""
    from cxrmodel.models.weights import imagenet_checkpoint_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # torch caches the hub dir once read
    path = imagenet_checkpoint_path()
    assert path == tmp_path / "torch-home" / "hub" / "checkpoints" / "densenet121-a639ec97.pth"
    path.parent.mkdir(parents=True)
    # torchvision's published file: legacy layer names, no num_batches_tracked buffers
    torch.save({k: v for k, v in _legacy(reference_state).items() if not k.endswith("num_batches_tracked")}, path)

    def no_network(*args, **kwargs):
        raise AssertionError("the network was used although the file is cached")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    model = build_model("densenet121_fpn", **TrainConfig(weights="imagenet").backbone_kwargs())
    loaded = model.backbone.body.state_dict()
    compared = [k for k in loaded if not k.endswith("num_batches_tracked")]
    assert len(compared) > 300  # the backbone up to denseblock4 (norm5 is not part of it)
    for key in compared:
        assert torch.equal(loaded[key], reference_state[key]), key


def test_missing_imagenet_weights_name_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(FileNotFoundError) as info:
        build_model("densenet121_fpn", weights="imagenet")
    message = str(info.value)
    assert "densenet121-a639ec97.pth" in message and str(tmp_path / "empty-home" / "hub" / "checkpoints") in message
    assert "https://download.pytorch.org/models/densenet121-a639ec97.pth" in message and "weights='file'" in message
