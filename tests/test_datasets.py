"""The study dataset: cached images, patient features, labels and flips as tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_train import _to_float

from cxrmodel.data.datasets import StudyDataset


def test_study_dataset_flips_and_labels():
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    patient = np.array([[0.1, 0, 1], [0.2, 1, 0], [0.3, 0, 0]], dtype=np.float64)
    labels = np.eye(3, 14, dtype=np.uint8)
    ds = StudyDataset(images.__getitem__, patient, labels, flips=[False, True, False])
    assert len(ds) == 3

    image, pat, lab, idx = ds[0]
    assert idx == 0
    assert image.shape == (1, 4, 5) and image.dtype == torch.uint8
    assert torch.equal(image[0], torch.from_numpy(images[0]))

    image, pat, lab, idx = ds[1]
    assert idx == 1
    assert torch.equal(image, torch.flip(torch.from_numpy(images[1])[None], dims=[-1]))
    assert image[0, 0, 0].item() == images[1, 0, -1]  # mirrored left-right
    assert pat.dtype == torch.float32
    torch.testing.assert_close(pat, torch.tensor([0.2, 1.0, 0.0]))
    assert lab.dtype == torch.float32 and lab.shape == (14,)
    assert lab.tolist() == [0.0, 1.0] + [0.0] * 12


def test_study_dataset_without_labels_and_with_transform():
    images = np.full((2, 4, 4), 255, dtype=np.uint8)
    ds = StudyDataset(images.__getitem__, np.zeros((2, 3)), labels=None, transform=_to_float)
    image, _, lab, _ = ds[1]
    assert torch.equal(lab, torch.zeros(14))
    assert image.dtype == torch.float32 and torch.all(image == 1.0)
    with pytest.raises(ValueError, match="labels has 1 rows"):
        StudyDataset(images.__getitem__, np.zeros((2, 3)), labels=np.zeros((1, 14)))
