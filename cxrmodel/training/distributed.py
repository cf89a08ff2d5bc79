"""Multi-process data-parallel training (PyTorch DDP) helpers. Pure library: torch only.

One process per device, launched by ``torchrun`` (see :mod:`flows.train_ddp`), which sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.

The pieces and the choices behind them:

* :func:`init_from_env` joins the process group (``nccl`` with CUDA, ``gloo`` on CPU) and pins
  each process to ``cuda:LOCAL_RANK``. Without ``WORLD_SIZE`` in the environment it returns a
  single-process context and starts no process group, so the same entry point also runs
  under plain ``python``.
* :func:`wrap_ddp` wraps the model in ``DistributedDataParallel``. Its constructor broadcasts
  rank 0's parameters and buffers, every backward all-reduces (averages) the gradients, and
  every training forward re-broadcasts rank 0's buffers (BatchNorm running statistics), so
  all ranks take the same optimiser step and hold the same parameters.
* :func:`distributed_loader` gives each rank a disjoint ``1/world_size`` shard of the
  training set through a ``DistributedSampler``. ``batch_size`` is **per process**: the global
  batch is ``world_size * batch_size``. ``cxrmodel.training.loop.fit`` calls ``sampler.set_epoch``
  every epoch so the shuffle changes from epoch to epoch (the same way on every rank).
* Validation is **not** sharded by ``fit``: rank 0 evaluates the whole validation set (a plain
  ``DataLoader`` without a sampler) and :func:`broadcast_object` hands its predictions to the
  other ranks, which sit idle meanwhile. Every rank therefore computes the same metrics from
  the same numbers and takes the same learning-rate, best-epoch and early-stopping decisions:
  ranks that evaluated separately could disagree in the last bit (different kernels,
  BatchNorm statistics of their own last batch) and an early stop taken by one rank only
  would hang the others in their next all-reduce. The validation split is small (8 %), so
  evaluating it on one device costs little; for a large one, shard it with a
  ``DistributedSampler(shuffle=False)`` and merge the shards with
  :func:`all_gather_predictions`, which drops the sampler's padding and restores the
  dataset order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job. ``backend`` is None for a single process without a
    process group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that may write the database, artefacts and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when there are other ranks to talk to."""
        return self.world_size > 1 and self.backend is not None

    def describe(self) -> str:
        """Short description for logs and the ``training_runs.device`` column (32 chars)."""
        if not self.distributed:
            return str(self.device)
        return f"{self.device.type} x{self.world_size} ddp/{self.backend}"[:32]


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def init_from_env(backend: str | None = None, device: str = "auto", timeout: timedelta | None = None) -> DistContext:
    """Join the process group described by torchrun's environment variables.

    ``backend`` defaults to ``'nccl'`` when CUDA is used and ``'gloo'`` otherwise. ``device``
    is ``TrainConfig.device``: ``'auto'`` uses ``cuda:LOCAL_RANK`` when CUDA is available,
    ``'cpu'`` forces CPU (and gloo), ``'cuda'``/``'cuda:N'`` require CUDA (each process still
    takes ``cuda:LOCAL_RANK``). Without ``WORLD_SIZE`` in the environment this is a single
    process: no process group is started and ``backend`` is None. Calling it again once the
    group exists returns the context of the existing group.
    """
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ValueError(f"DDP runs on 'auto', 'cpu' or 'cuda', got device {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for but CUDA is not available")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    local_rank = _env_int("LOCAL_RANK", 0)
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) visible")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")

    if "WORLD_SIZE" not in os.environ and not (dist.is_available() and dist.is_initialized()):
        return DistContext(rank=0, world_size=1, local_rank=0, device=dev, backend=None)
    if not dist.is_available():  # pragma: no cover - torch built without distributed
        raise RuntimeError("this torch build has no torch.distributed")
    if not dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise RuntimeError(f"{name} is not set: launch with torchrun (it sets RANK, WORLD_SIZE, {name}, ...)")
        backend = backend or ("nccl" if use_cuda else "gloo")
        kwargs = {"timeout": timeout} if timeout is not None else {}
        if backend == "nccl" and use_cuda:
            kwargs["device_id"] = dev  # binds the communicator to this GPU (eager init, no guessing in barrier)
        dist.init_process_group(
            backend=backend, init_method="env://", rank=_env_int("RANK", 0), world_size=_env_int("WORLD_SIZE", 1), **kwargs
        )
    return DistContext(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=dev, backend=dist.get_backend()
    )


def is_distributed() -> bool:
    """A process group with more than one rank exists."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def wrap_ddp(model: nn.Module, ctx: DistContext, **ddp_kwargs) -> nn.Module:
    """Move ``model`` to ``ctx.device`` and wrap it in ``DistributedDataParallel`` (returned
    unwrapped for a single process). Keyword arguments go to DDP."""
    model = model.to(ctx.device)
    if not ctx.distributed:
        return model
    if ctx.device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[ctx.device.index], output_device=ctx.device.index, **ddp_kwargs)
    return DistributedDataParallel(model, **ddp_kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def distributed_loader(
    dataset: Dataset,
    batch_size: int,
    ctx: DistContext,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """A loader over this rank's shard of ``dataset``; ``batch_size`` is per process.

    The ``DistributedSampler`` pads the dataset (repeating its first indices) to a multiple of
    ``world_size`` so that every rank runs the same number of steps, which DDP needs (a rank
    with one step more would wait forever in its all-reduce). ``drop_last`` applies to the
    rank's last, smaller batch. Call ``loader.sampler.set_epoch(epoch)`` every epoch
    (``cxrmodel.training.loop.fit`` does) or every epoch reuses the first epoch's order.
    """
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )


def broadcast_object(obj, src: int = 0):
    """``obj`` as rank ``src`` has it, on every rank (pickled; keep it small). No-op for a
    single process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64). No-op for a single process.
    ``device`` must be the process's CUDA device with nccl."""
    if not is_distributed():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


@torch.no_grad()
def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank. DDP does so
    at the start of each training forward; after the last one every rank has updated its
    statistics with its own batch, and this makes the ranks agree again."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=src)


def all_gather_predictions(
    probs: np.ndarray, labels: np.ndarray, indices: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge per-rank predictions of a sharded evaluation into the full set, on every rank.

    ``indices`` are the dataset indices of this rank's rows (``StudyDataset`` yields them as
    its 4th item). Rows are returned sorted by dataset index with duplicates dropped (the
    padding a ``DistributedSampler`` adds): ``(probs [N, C], labels [N, C], indices [N])``.
    """
    local = (np.asarray(probs), np.asarray(labels), np.asarray(indices, dtype=np.int64))
    if is_distributed():
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, local)
    else:
        parts = [local]
    all_probs = np.concatenate([p for p, _, _ in parts])
    all_labels = np.concatenate([t for _, t, _ in parts])
    all_indices = np.concatenate([i for _, _, i in parts])
    unique, first = np.unique(all_indices, return_index=True)  # sorted, first occurrence of each
    return all_probs[first], all_labels[first], unique


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op for a single process)."""
    if not ctx.distributed or not dist.is_initialized():
        return
    if ctx.backend == "nccl" and ctx.device.type == "cuda":
        dist.barrier(device_ids=[ctx.device.index])
    else:
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
