"""Where a DenseNet121 backbone's initial weights come from.

- ``scratch``: random initialisation (the default; nothing to download).
- ``imagenet``: torchvision's weights API (``DenseNet121_Weights.IMAGENET1K_V1``): read from
  ``$TORCH_HOME/hub/checkpoints/densenet121-a639ec97.pth`` when it is there (offline), downloaded
  into that cache otherwise.
- ``file``: a local state-dict file (``torch.save(model.state_dict())`` of a torchvision
  DenseNet121, or its ``features.*`` part).
- ``hub``: a state-dict file in a Hugging Face model repository, fetched with
  ``hf_hub_download`` (cached; ``HF_HUB_OFFLINE=1`` honoured), then loaded as ``file``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

#: Old torchvision DenseNet checkpoints name layers ``norm.1`` instead of ``norm1``.
_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def normalise_densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename legacy ``denselayerN.norm.1.weight`` keys to ``denselayerN.norm1.weight``."""
    out = {}
    for key, value in state.items():
        match = _LEGACY_KEY.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


def load_state_dict_file(net: nn.Module, path: str | Path) -> nn.Module:
    """Load a DenseNet121 state dict from ``path`` into ``net`` (``features.*`` required)."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a DenseNet121 state dict (got {type(state).__name__})")
    state = normalise_densenet_keys(state)
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch: another DenseNet depth/growth rate
        raise ValueError(f"{path} is not a DenseNet121 state dict: {exc}") from exc
    missing_features = [k for k in missing if k.startswith("features.")]
    if missing_features or unexpected:
        raise ValueError(
            f"{path} is not a DenseNet121 state dict (missing {missing_features[:3]}..., unexpected {list(unexpected)[:3]}...)"
        )
    return net


def imagenet_checkpoint_path() -> Path:
    """Where torchvision keeps the ImageNet DenseNet121 checkpoint: ``$TORCH_HOME/hub/checkpoints/
    densenet121-a639ec97.pth`` (``TORCH_HOME`` defaults to ``~/.cache/torch``)."""
    from torchvision.models import DenseNet121_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(DenseNet121_Weights.IMAGENET1K_V1.url).name


def imagenet_densenet121() -> nn.Module:
    """torchvision DenseNet121 with ImageNet weights (seed 004's initialisation), through the
    weights API: read from torchvision's cache (:func:`imagenet_checkpoint_path`) when the file is
    there, so no network is needed; downloaded into that cache otherwise. Without network and
    without the file, the error says which file to put where."""
    from torchvision.models import DenseNet121_Weights, densenet121

    weights = DenseNet121_Weights.IMAGENET1K_V1
    cached = imagenet_checkpoint_path()
    try:
        return densenet121(weights=weights)
    except Exception as exc:  # no network and nothing cached, or a damaged file
        where = "is damaged or not a DenseNet121 state dict" if cached.is_file() else "is missing"
        raise FileNotFoundError(
            f"ImageNet DenseNet121 weights: {cached} {where} and could not be downloaded ({type(exc).__name__}: {exc}). "
            f"Copy {weights.url} to {cached} (or set TORCH_HOME to a folder whose hub/checkpoints/ holds it), "
            "or use weights='file' with pretrained_weights pointing at a local state dict."
        ) from exc


def fetch_hub_weights(repo_id: str, filename: str, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """Path of a state-dict file in a Hugging Face model repo (downloaded once, then cached)."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir))
