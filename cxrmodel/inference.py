"""Batch inference for scoring: decode straight from source files, never abort on a bad one.

A study whose image cannot be decoded, or whose metadata is missing, comes back as a
failure with its reason; every other study in the batch is scored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cxrmodel.imaging import ImageDecodeError, read_grayscale, resize_square


@dataclass(frozen=True)
class ScoringItem:
    study_id: int
    image_path: str
    patient: tuple[float, float, float] | None  # None: metadata missing


class ScoringDataset(Dataset):
    """Items ``(image [3, S, S] | None, patient [3], study_id, error | None)``."""

    def __init__(self, items: Sequence[ScoringItem], size: int, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.items = list(items)
        self.size = size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        try:
            pixels = resize_square(read_grayscale(Path(item.image_path)), self.size)
        except ImageDecodeError as exc:
            return None, None, item.study_id, str(exc)
        except Exception as exc:  # any decoder bug is a per-study failure, not a dead run
            return None, None, item.study_id, f"unreadable image: {type(exc).__name__}: {exc}"
        if item.patient is None:
            return None, None, item.study_id, "missing metadata: age, sex and view position are all unknown"
        image = self.transform(torch.from_numpy(pixels)[None])
        return image, torch.tensor(item.patient, dtype=torch.float32), item.study_id, None


def _collate(batch):
    ok = [b for b in batch if b[3] is None]
    failed = {b[2]: b[3] for b in batch if b[3] is not None}
    if ok:
        images = torch.stack([b[0] for b in ok])
        patient = torch.stack([b[1] for b in ok])
    else:
        images = patient = None
    return images, patient, [b[2] for b in ok], failed


@dataclass
class ScoredBatch:
    study_ids: list[int]
    probabilities: np.ndarray  # [n, 14]
    failures: dict[int, str]


@torch.no_grad()
def score_batches(
    model: torch.nn.Module,
    dataset: ScoringDataset,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
) -> Iterator[ScoredBatch]:
    """Yield probabilities batch by batch (so the caller can commit each batch)."""
    model.eval().to(device)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        # Spawned workers: forking a process that runs Prefect's threads and open database
        # connections is unsafe.
        multiprocessing_context="spawn" if num_workers > 0 else None,
    )
    for images, patient, ids, failed in loader:
        if images is None:
            yield ScoredBatch([], np.zeros((0, 14), np.float32), failed)
            continue
        logits = model(images.to(device, non_blocking=True), patient.to(device, non_blocking=True))
        yield ScoredBatch(ids, torch.sigmoid(logits.float()).cpu().numpy(), failed)
