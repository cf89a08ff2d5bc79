"""Seed 004's image transforms (torchvision v2) for uint8 grey images of a fixed size, and the
augmentation strengths a recipe chooses from (``TrainConfig.augmentation``)."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_FRACTION = 0.9
LIGHT_CROP_FRACTION = 0.95


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


def light_train_transform(size: int) -> v2.Compose:
    """A gentler augmentation for small sets of small images: random ~95 % crop, resize, affine
    (+-5 deg, 3 % shift), no blur (at 64 px a 3x3 blur erases much of what there is)."""
    return v2.Compose(
        [
            v2.RandomCrop(max(1, round(size * LIGHT_CROP_FRACTION))),
            v2.Resize((size, size), antialias=True),
            v2.RandomAffine(degrees=5, translate=(0.03, 0.03)),
            *_to_three_channel_float(),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def augmentation_transform(strength: str, size: int) -> v2.Compose:
    """The training transform of an augmentation strength: ``'seed004'`` (:func:`train_transform`),
    ``'light'`` (:func:`light_train_transform`) or ``'none'`` (:func:`eval_transform`)."""
    builders = {"seed004": train_transform, "light": light_train_transform, "none": eval_transform}
    try:
        return builders[strength](size)
    except KeyError:
        raise ValueError(f"unknown augmentation {strength!r}; choose from {sorted(builders)}") from None


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
