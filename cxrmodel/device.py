"""Which torch device a run uses: one small home, so loading a model does not reach into the
training loop for it."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU; any other name as given
    (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
