"""Torch datasets over decoded images and patient features."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

ImageLoader = Callable[[int], np.ndarray]


class StudyDataset(Dataset):
    """One item per study: ``(image [3, S, S] float, patient [3] float, labels [14] float, index)``.

    ``load_image(i)`` returns the uint8 ``[S, S]`` image of row ``i`` (usually from the image
    cache); ``flips[i]`` mirrors it horizontally (the seed's flipped duplicates). Studies
    without labels (scoring) get a zero label vector.
    """

    def __init__(
        self,
        load_image: ImageLoader,
        patient: np.ndarray,
        labels: np.ndarray | None = None,
        flips: Sequence[bool] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        n = len(patient)
        if labels is not None and len(labels) != n:
            raise ValueError(f"labels has {len(labels)} rows, patient features {n}")
        self.load_image = load_image
        self.patient = torch.as_tensor(np.asarray(patient, dtype=np.float32))
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.float32)) if labels is not None else None
        self.flips = np.zeros(n, dtype=bool) if flips is None else np.asarray(flips, dtype=bool)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.patient)

    def __getitem__(self, i: int):
        image = torch.from_numpy(np.ascontiguousarray(self.load_image(i)))[None]
        if self.flips[i]:
            image = torch.flip(image, dims=[-1])
        if self.transform is not None:
            image = self.transform(image)
        labels = self.labels[i] if self.labels is not None else torch.zeros(14)
        return image, self.patient[i], labels, i
