"""Progress callbacks: how a long library step says how far it has come, without knowing who
listens (the Prefect tasks draw a terminal bar and update a progress artifact from them).

A :data:`ProgressCallback` is called with ``(completed, total)`` after each unit of work (an
image cached, a batch trained, a study scored); it must be cheap or throttle itself.
"""

from __future__ import annotations

from collections.abc import Callable

#: ``callback(completed, total)``; ``completed`` only grows, ``total`` may be revised.
ProgressCallback = Callable[[int, int], None]

#: ``callback(epoch, batches_done, batches_per_epoch)`` after each training batch.
BatchCallback = Callable[[int, int, int], None]


def report(callback: ProgressCallback | None, completed: int, total: int) -> None:
    """Call ``callback`` when there is one."""
    if callback is not None:
        callback(completed, total)
