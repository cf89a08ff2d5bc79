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


class HostShare:
    """This process's place among the torch processes of one host, so their threads add up to
    the cores whether one runs or several.

    Each member holds a file named by its PID in ``folder`` (one folder per host, e.g. under the
    temporary directory). :meth:`rebalance` counts the members still alive (a crashed process's
    file is removed by the next one that looks) and gives this process ``cores // members``
    threads, at least 1. Called between batches it is throttled to one look every ``every_s``
    seconds, so a job alone keeps every core and two jobs that meet drop to their share within
    seconds instead of spinning against each other for the rest of their run (issue 24:
    ``bench/contention.py``)."""

    def __init__(self, folder: str | os.PathLike, cores: int | None = None, every_s: float = 2.0) -> None:
        from pathlib import Path

        self.folder = Path(folder)
        self.cores = cores or available_cores()
        self.every_s = every_s
        self.threads = 0
        self._member = self.folder / str(os.getpid())
        self._last = float("-inf")

    def join(self) -> int:
        """Become a member and take this process's share now; returns the threads."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._member.touch()
        return self.rebalance(force=True)

    def leave(self) -> None:
        """Stop being counted (at exit; a process that dies without it is noticed by the others)."""
        self._member.unlink(missing_ok=True)

    def members(self) -> int:
        """The live torch processes of this host that share it, this one included."""
        alive = 0
        for entry in self.folder.iterdir():
            if not entry.name.isdigit():
                continue
            if _process_alive(int(entry.name)):
                alive += 1
            else:
                entry.unlink(missing_ok=True)
        return max(1, alive)

    def rebalance(self, force: bool = False) -> int:
        """Take this process's current share (at most once every ``every_s`` unless ``force``)."""
        import time

        now = time.monotonic()
        if force or now - self._last >= self.every_s:
            self._last = now
            if not self._member.exists():  # removed by hand or by a clean-up: count this process again
                self._member.touch()
            share = share_of_cores(self.members(), self.cores)
            if share != self.threads:
                self.threads = use_torch_threads(share)
        return self.threads


def _process_alive(pid: int) -> bool:
    """Whether a process with ``pid`` runs (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


#: The share of this process, once :func:`configure_threads` joined one.
_share: HostShare | None = None


def configure_threads(threads: int | None, share_folder: str | os.PathLike) -> int:
    """The entry points' one call: ``threads`` intra-op threads when given (a fixed number),
    otherwise this process joins the host's :class:`HostShare` in ``share_folder`` and follows
    it (:func:`rebalance`). Returns the threads now in use."""
    import atexit

    global _share
    if threads:
        _share = None
        return use_torch_threads(threads)
    if _share is None or str(_share.folder) != str(share_folder):
        _share = HostShare(share_folder)
        atexit.register(_share.leave)
    return _share.join()


def rebalance() -> None:
    """Follow the host's share between batches (training steps, scoring batches): nothing when
    no share was joined (a fixed number of threads, or a plain library call)."""
    if _share is not None:
        _share.rebalance()
