"""How many intra-op threads torch uses in this process and the processes it starts.

PyTorch's default is one thread per core. Two processes that each do that on the same cores
(a Prefect worker running two flow runs, the API beside a night, two Dask workers) make every
OpenMP thread spin-wait for cores the other process holds: on two cores, two DenseNet-121
training jobs at 48 px ran at 6 images/s each against 78 alone (issue 24). Giving each process
its share of the cores (``bench/contention.py`` measures it) keeps both going.

The library reads no environment variables: the entry points (``cxr``, the flows a worker runs,
the API, Dask workers, DDP ranks) resolve the number from their settings (``CXR_TORCH_THREADS``)
and call :func:`use_torch_threads` with it.
"""

from __future__ import annotations

import os
import sys

#: What child processes read before torch starts (OpenMP and MKL thread pools).
_CHILD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def share_of_cores(processes: int, cores: int | None = None) -> int:
    """The threads each of ``processes`` torch processes gets on ``cores`` (default: this
    process's): an equal share, at least 1."""
    return max(1, (cores or available_cores()) // max(1, processes))


def use_torch_threads(threads: int) -> int:
    """Use ``threads`` intra-op threads (at least 1) from now on: in this process when torch is
    already imported (``torch.set_num_threads``), and, through ``OMP_NUM_THREADS`` and
    ``MKL_NUM_THREADS``, in torch when it is imported later and in every process started from
    here (DataLoader workers, DDP ranks, a local Dask cluster's workers). Importing torch is left
    to the caller: a command that never runs a model does not pay for it. Returns the number."""
    threads = max(1, int(threads))
    for name in _CHILD_VARIABLES:
        os.environ[name] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
