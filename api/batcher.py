"""Micro-batching: concurrent requests share one forward pass.

Requests put their prepared image on an asyncio queue and await a future. One worker task
takes the first waiting item, then whatever else arrives within ``max_wait_s`` (or is already
queued) up to ``max_batch`` items, and runs the model on them in one thread of its own (the
event loop keeps accepting requests meanwhile). Items prepared for different champions (a swap
in between) are run in separate groups. Grad-CAM and anything else that touches the network
goes through :meth:`MicroBatcher.run_exclusive`, on the same thread: captum's hooks on a module
would otherwise see another thread's forward pass.

Requests hand over decoded pixels, not tensors: the preprocessing (``prepare_image``) runs on
the model thread too, so every torch op of a request runs on one thread and one OpenMP pool
(a second calling thread gets a pool of its own, whose workers compete for the same cores).
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from api.champion import Champion
from cxrmodel.serving import predict_with_embeddings, prepare_image


@dataclass
class _Item:
    champion: Champion
    pixels: np.ndarray  # uint8 [H, W], decoded
    patient: torch.Tensor  # [3]
    future: asyncio.Future = field(repr=False)


@dataclass(frozen=True)
class Prediction:
    probabilities: np.ndarray  # [14]
    embedding: np.ndarray | None  # [d]; None for a model without a network (classical)
    batch_size: int  # how many requests shared the forward pass
    image: torch.Tensor  # the model's input it was computed from ([3, S, S] for a network)


class MicroBatcher:
    def __init__(self, max_batch: int = 8, max_wait_s: float = 0.005) -> None:
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxr-model")
        self._task: asyncio.Task | None = None
        self.batches_run = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._work(), name="cxr-micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def predict(self, champion: Champion, pixels: np.ndarray, patient: torch.Tensor) -> Prediction:
        """Probabilities (and embedding) of decoded ``pixels`` with ``patient`` features."""
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(champion, pixels, patient, future))
        return await future

    async def run_exclusive(self, fn, *args):
        """``fn(*args)`` on the model thread, between batches."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _collect(self) -> list[_Item]:
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [item for item in await self._collect() if not item.future.done()]  # a client gone: skip it
            groups: dict[tuple[int, int], list[_Item]] = {}
            for item in batch:
                groups.setdefault(item.champion.identity, []).append(item)
            for items in groups.values():
                try:
                    images, probs, embeddings = await loop.run_in_executor(self._executor, _forward, items)
                except Exception as exc:  # noqa: BLE001 - the requests get the error, the worker lives on
                    for item in items:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    continue
                self.batches_run += 1
                for i, item in enumerate(items):
                    if not item.future.done():
                        embedding = None if embeddings is None else embeddings[i]
                        item.future.set_result(Prediction(probs[i], embedding, len(items), images[i]))


def _forward(items: list[_Item]) -> tuple[torch.Tensor, np.ndarray, np.ndarray | None]:
    model = items[0].champion.model
    images = torch.stack([prepare_image(item.pixels, model) for item in items])
    patient = torch.stack([item.patient for item in items])
    return (images, *predict_with_embeddings(model, images, patient))
