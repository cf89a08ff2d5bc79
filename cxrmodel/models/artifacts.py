"""Model artefacts: safetensors files whose sha256 is recorded and checked on every load."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cxrmodel.io import atomic_save_to, sha256_file


class ArtifactIntegrityError(RuntimeError):
    """An artefact's bytes do not match the sha256 recorded for it."""


def save_state_dict(state: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> str:
    """Write tensors atomically as safetensors; return the file's sha256."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {"json": json.dumps(metadata or {}, sort_keys=True)}
    return sha256_file(atomic_save_to(path, lambda tmp: save_file(tensors, tmp, metadata=meta)))


def load_state_dict(path: str | Path, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    """Read a safetensors file after checking its sha256 (refused on mismatch)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model artefact not found: {path}")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise ArtifactIntegrityError(
                f"{path} has sha256 {actual[:12]}..., the registry expects {expected_sha256[:12]}...; refusing to load"
            )
    return load_file(str(path))


def read_metadata(path: str | Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return json.loads((fh.metadata() or {}).get("json", "{}"))
