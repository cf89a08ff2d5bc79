"""Network artefacts saved before issue 21 (when the pyramid backbone was a torch.fx graph from
torchvision's ``create_feature_extractor``) still load, and give the same logits.

``tests/fixtures/legacy_networks.json`` was written by the old code (``build_model`` of the
commit before the change): for each network, its state-dict keys and shapes in order, and the
logits it gave for a fixed input with the deterministic weights of :func:`legacy_weights`. The
test writes those weights under the old key names into a safetensors artefact, loads it through
the registry's path (:func:`load_model_version`) and compares the logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrmodel.data.metadata import AgeScaler
from cxrmodel.models.artifacts import save_state_dict
from cxrmodel.models.loading import load_model_version
from cxrmodel.models.networks import build_model
from cxrmodel.models.version_files import ModelVersionFiles

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "legacy_networks.json").read_text())


def legacy_weights(keys_shapes: list, seed: int = 0) -> dict[str, torch.Tensor]:
    """The weights the fixture's logits were computed with (same generator, same order)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in keys_shapes:
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros(shape, dtype=torch.long)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        else:
            out[key] = torch.randn(shape, generator=g) * 0.05
    return out


@pytest.mark.parametrize("name", sorted(FIXTURE))
def test_state_dict_keys_and_shapes_unchanged(name):
    kind, backbone = name.split("/")
    now = [(k, list(v.shape)) for k, v in build_model(kind, backbone=backbone).state_dict().items()]
    assert now == [(k, shape) for k, shape in FIXTURE[name]["state_dict"]]


@pytest.mark.parametrize("name", sorted(FIXTURE))
def test_old_artefact_loads_and_gives_the_same_logits(name, tmp_path):
    kind, backbone = name.split("/")
    sha = save_state_dict(legacy_weights(FIXTURE[name]["state_dict"]), tmp_path / "model.safetensors")
    files = ModelVersionFiles(
        version_id=1,
        name="legacy",
        kind=kind,
        artifact_path=tmp_path / "model.safetensors",
        sha256=sha,
        config={"image_size": 32, "age_scaler": AgeScaler(0.0, 100.0, 50.0).to_dict(), "train": {"backbone": backbone}},
    )
    loaded = load_model_version(files)
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    patient = torch.tensor([[0.5, 1.0, 0.0], [0.2, 0.0, 1.0]])
    with torch.no_grad():
        logits = loaded.network(image, patient)
    np.testing.assert_allclose(logits.numpy(), np.array(FIXTURE[name]["logits"]), rtol=1e-4, atol=1e-5)


def test_no_torch_fx_in_the_network():
    """The backbone is plain modules: nothing in it is a torch.fx GraphModule."""
    model = build_model("densenet121_fpn", backbone="densenet_small")
    assert not any(type(m).__module__.startswith("torch.fx") for m in model.modules())
