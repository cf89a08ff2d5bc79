"""Model artefacts: safetensors files whose sha256 the registry keeps and every load checks."""

from __future__ import annotations

import hashlib

import pytest
import torch
from test_train import TinyNet

from cxrmodel.io import sha256_file
from cxrmodel.models.artifacts import ArtifactIntegrityError, load_state_dict, read_metadata, save_state_dict


def _state():
    torch.manual_seed(0)
    state = TinyNet().state_dict()
    state["extra.transposed"] = torch.arange(6.0).reshape(2, 3).t()  # non-contiguous
    state["extra.int"] = torch.tensor([1, 2, 3], dtype=torch.int64)
    return state


def test_save_state_dict_returns_file_sha256(tmp_path):
    path = tmp_path / "models" / "m.safetensors"
    digest = save_state_dict(_state(), path, metadata={"run": 7, "arch": "tiny"})
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == sha256_file(path)
    assert len(digest) == 64
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.safetensors"]  # no temp file left
    assert read_metadata(path) == {"arch": "tiny", "run": 7}
    # deterministic bytes for the same tensors and metadata
    assert save_state_dict(_state(), tmp_path / "again.safetensors", metadata={"arch": "tiny", "run": 7}) == digest


def test_state_dict_round_trip(tmp_path):
    state = _state()
    path = tmp_path / "m.safetensors"
    digest = save_state_dict(state, path)
    for expected_sha in (digest, None):
        loaded = load_state_dict(path, expected_sha)
        assert set(loaded) == set(state)
        for k, v in state.items():
            assert loaded[k].dtype == v.dtype
            assert torch.equal(loaded[k], v), k
    model = TinyNet()
    model.load_state_dict({k: v for k, v in load_state_dict(path, digest).items() if not k.startswith("extra.")})
    assert torch.equal(model.head.weight, state["head.weight"])


def test_load_refuses_wrong_or_tampered_sha(tmp_path):
    path = tmp_path / "m.safetensors"
    digest = save_state_dict(_state(), path)
    with pytest.raises(ArtifactIntegrityError):
        load_state_dict(path, "0" * 64)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # flip bits in the last tensor byte
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="refusing to load"):
        load_state_dict(path, digest)
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "missing.safetensors", digest)
