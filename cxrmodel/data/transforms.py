"""Seed 004's image transforms (torchvision v2) for uint8 grey images of a fixed size."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_FRACTION = 0.9


def grey_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """``[1, H, W] -> [3, H, W]`` (a view; module-level so transforms pickle for spawned workers)."""
    return image.expand(3, -1, -1)


def _to_three_channel_float() -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Lambda(grey_to_rgb)]


def train_transform(size: int) -> v2.Compose:
    """Random ~90 % crop, resize, affine (+-7 deg, 6 % shift), blur (k=3, sigma 0.2-1.5, p=0.4),
    ImageNet normalisation. Input ``[1, S, S]`` uint8 tensor; output ``[3, size, size]`` float."""
    return v2.Compose(
        [
            v2.RandomCrop(max(1, round(size * CROP_FRACTION))),
            v2.Resize((size, size), antialias=True),
            v2.RandomAffine(degrees=7, translate=(0.06, 0.06)),
            v2.RandomApply([v2.GaussianBlur(kernel_size=3, sigma=(0.2, 1.5))], p=0.4),
            *_to_three_channel_float(),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def eval_transform(size: int) -> v2.Compose:
    """Centre 90 % crop, resize, ImageNet normalisation (validation, test and scoring)."""
    return v2.Compose(
        [
            v2.CenterCrop(max(1, round(size * CROP_FRACTION))),
            v2.Resize((size, size), antialias=True),
            *_to_three_channel_float(),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
