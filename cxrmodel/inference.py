"""Batch inference for scoring: decode straight from source files, never abort on a bad one.

A study whose image cannot be decoded, or whose metadata is missing, comes back as a
failure with its reason; every other study in the batch is scored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from cxrmodel.data.imaging import ImageDecodeError, read_grayscale, resize_square
from cxrmodel.data.metadata import AgeScaler, patient_features
from cxrmodel.device import resolve_device
from cxrmodel.models.loading import LoadedModel
from cxrmodel.models.networks import network_probabilities


class PendingStudy(Protocol):
    """What scoring needs of a study (the database's study entities have it)."""

    id: int
    image_path: str
    age: float | None
    sex: str | None
    view: str | None


@dataclass(frozen=True)
class ScoringItem:
    study_id: int
    image_path: str
    patient: tuple[float, float, float] | None  # None: metadata missing


def scoring_items(studies: Sequence[PendingStudy], scaler: AgeScaler) -> list[ScoringItem]:
    """One item per study with its patient features encoded as the model was trained
    (:func:`cxrmodel.data.metadata.patient_features`); ``patient`` is None where age, sex and
    view are all unknown (scored as a failure: missing metadata)."""
    frame = pd.DataFrame({"age": [s.age for s in studies], "sex": [s.sex for s in studies], "view": [s.view for s in studies]})
    features = patient_features(frame, scaler)
    return [
        ScoringItem(
            s.id, s.image_path, None if s.age is None and s.sex is None and s.view is None else tuple(float(v) for v in row)
        )
        for s, row in zip(studies, features, strict=True)
    ]


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


def _submit_batch(pool: ThreadPoolExecutor, dataset: ScoringDataset, start: int, batch_size: int) -> list[Future]:
    return [pool.submit(dataset.__getitem__, i) for i in range(start, min(start + batch_size, len(dataset)))]


class BatchPredictor(Protocol):
    """What scoring runs: :class:`~cxrmodel.models.loading.LoadedModel` of any kind, or a bare
    network wrapped by :class:`NetworkPredictor`."""

    def prepare(self, device: torch.device) -> object: ...

    def predict_batch(self, inputs: torch.Tensor, patient: torch.Tensor, device: torch.device) -> np.ndarray: ...


@dataclass
class NetworkPredictor:
    """A bare network (``forward(images, patient) -> logits``) as a :class:`BatchPredictor`."""

    network: torch.nn.Module
    tta_hflip: bool = False

    def prepare(self, device: torch.device) -> NetworkPredictor:
        self.network.eval().to(device)
        return self

    def predict_batch(self, inputs: torch.Tensor, patient: torch.Tensor, device: torch.device) -> np.ndarray:
        images, patient = inputs.to(device, non_blocking=True), patient.to(device, non_blocking=True)
        return network_probabilities(self.network, images, patient, self.tta_hflip).float().cpu().numpy()


def as_predictor(model: BatchPredictor | torch.nn.Module, tta_hflip: bool = False) -> BatchPredictor:
    """``model`` itself, or a bare network wrapped (``tta_hflip``: flip-averaged; a loaded
    version carries its own recipe's choice)."""
    return NetworkPredictor(model, tta_hflip) if isinstance(model, torch.nn.Module) else model


def _score(model: BatchPredictor, batch, device: torch.device) -> ScoredBatch:
    images, patient, ids, failed = batch
    if images is None:
        return ScoredBatch([], np.zeros((0, 14), np.float32), failed)
    return ScoredBatch(ids, model.predict_batch(images, patient, device), failed)


@torch.no_grad()
def score_batches(
    model: BatchPredictor | torch.nn.Module,
    dataset: ScoringDataset,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    *,
    decode_threads: int | None = None,
    prefetch_factor: int = 2,
    tta_hflip: bool = False,
) -> Iterator[ScoredBatch]:
    """Yield probabilities batch by batch (so the caller can commit each batch). ``model`` is a
    :class:`BatchPredictor` (a loaded model version of any kind) or a bare network (flip-averaged
    with ``tta_hflip``).

    ``num_workers == 0`` (the default) decodes in this process with ``decode_threads`` threads
    (default ``torch.get_num_threads()``, the cores the model itself uses; PIL's decoders and
    resampling release the GIL). All of them decode one batch at once, and the next batch is
    submitted as soon as the model is done with the current one, so it decodes while the
    caller handles the batch just yielded (its database write) but never while the model runs:
    on a small CPU host an intra-op thread delayed by a decoder stalls every op of the
    network, which costs more than the overlap gains. On an accelerator (``device`` not CPU)
    the next batch decodes while the model runs.

    ``num_workers > 0`` uses a DataLoader with that many *spawned* worker processes (one torch
    thread each, ``prefetch_factor`` batches ahead each): seconds of start-up, and decoding
    then runs beside the model, which pays on a GPU host or where cores are spare.
    """
    model = as_predictor(model, tta_hflip)
    model.prepare(device)
    if num_workers > 0:
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=device.type == "cuda",
            # Spawned workers: forking a process that runs Prefect's threads and open database
            # connections is unsafe.
            multiprocessing_context="spawn",
            prefetch_factor=prefetch_factor,
        )
        for batch in loader:
            yield _score(model, batch, device)
        return
    n = len(dataset)
    # On an accelerator the cores are free while the model runs: decode the next batch then.
    decode_beside_model = device.type != "cpu"
    pool = ThreadPoolExecutor(max_workers=max(1, decode_threads or torch.get_num_threads()), thread_name_prefix="cxr-decode")
    pending: list[Future] = _submit_batch(pool, dataset, 0, batch_size)
    try:
        for start in range(0, n, batch_size):
            batch = _collate([f.result() for f in pending])
            if decode_beside_model:
                pending = _submit_batch(pool, dataset, start + batch_size, batch_size)  # [] after the last
            scored = _score(model, batch, device)
            if not decode_beside_model:
                pending = _submit_batch(pool, dataset, start + batch_size, batch_size)
            yield scored
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def score_studies(
    model: LoadedModel, studies: Sequence[PendingStudy], batch_size: int = 64, device: str = "auto", num_workers: int = 0
) -> Iterator[ScoredBatch]:
    """:func:`score_batches` of a loaded model version (any kind) over ``studies``, decoded from
    their files and turned into the model's input by its own ``input_transform``."""
    dataset = ScoringDataset(scoring_items(studies, model.age_scaler), model.image_size, model.input_transform)
    yield from score_batches(model, dataset, batch_size, resolve_device(device), num_workers=num_workers)
