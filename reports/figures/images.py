"""Images embedded in the reports: a study's grayscale image and its Grad-CAM overlay, as small
PNG data URIs."""

from __future__ import annotations

import io
import math
from typing import Any

import matplotlib
import matplotlib.image as mpimg
import numpy as np

from reports.figures.canvas import png_to_data_uri

__all__ = ["gradcam_overlay", "image_to_data_uri"]


def _min_max_scaled(arr: np.ndarray) -> np.ndarray:
    """``arr`` scaled to [0, 1] over its finite values (non-finite pixels become 0; a flat image all 0)."""
    finite = np.isfinite(arr)
    lo, hi = (float(arr[finite].min()), float(arr[finite].max())) if finite.any() else (0.0, 1.0)
    return np.zeros_like(arr) if hi <= lo else (np.where(finite, arr, lo) - lo) / (hi - lo)


def _png(pixels: np.ndarray, **kwargs) -> str:
    buf = io.BytesIO()
    mpimg.imsave(buf, pixels, format="png", **kwargs)
    return png_to_data_uri(buf.getvalue())


def image_to_data_uri(image: Any, *, max_side: int = 320) -> str:
    """A grayscale image array (``[H, W]``, any numeric range) as a small PNG data URI.

    Useful for the ``examples`` of the evaluation report. A ``[1, H, W]`` / ``[3, H, W]`` or
    ``[H, W, 3]`` array is reduced to grey first. The image is min-max scaled to 0..255 and
    downsampled by striding so its longer side is at most ``max_side``.
    """
    arr = np.asarray(image, dtype=float)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr[0] if arr.shape[0] == 1 else arr.mean(axis=0)
    if arr.ndim == 3:
        arr = arr.mean(axis=-1)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"expected a 2-D image, got shape {np.shape(image)}")
    step = max(1, math.ceil(max(arr.shape) / max_side))
    scaled = _min_max_scaled(arr[::step, ::step])
    return _png((scaled * 255).astype(np.uint8), cmap="gray", vmin=0, vmax=255)


def gradcam_overlay(image: Any, heatmap: Any, *, alpha: float = 0.5, min_side: int = 224, cmap: str = "jet") -> str:
    """A grey image with a Grad-CAM heat map blended over it, as a PNG data URI.

    ``image`` is ``[H, W]`` (any range; min-max scaled), ``heatmap`` ``[H, W]`` in ``[0, 1]``. Each
    pixel mixes the grey image with ``cmap(heat)`` in proportion ``alpha * heat``, so cold regions
    show the plain image. Small images are enlarged by an integer factor (nearest neighbour) to
    at least ``min_side`` pixels on their shorter side.
    """
    grey = np.asarray(image, dtype=float)
    heat = np.asarray(heatmap, dtype=float)
    if grey.ndim != 2 or heat.shape != grey.shape:
        raise ValueError(f"image and heatmap must be the same 2-D shape; got {grey.shape} and {heat.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    grey = _min_max_scaled(grey)
    heat = np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0)
    weight = (alpha * heat)[..., None]
    rgb = (1.0 - weight) * grey[..., None] + weight * matplotlib.colormaps[cmap](heat)[..., :3]
    factor = max(1, math.ceil(min_side / max(1, min(rgb.shape[:2]))))
    rgb = np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)
    return _png((np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8))
