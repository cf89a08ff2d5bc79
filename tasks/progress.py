"""Progress of a long step in two places: a bar with rate and ETA on the terminal (rich) and a
Prefect progress artifact in the UI (``create_progress_artifact``, then
``update_progress_artifact`` at most every ``min_interval`` seconds).

The library reports through plain callbacks (:mod:`cxrmodel.progress`); a task makes a
:class:`StageProgress`, hands ``stage.callback()`` (or a row's ``update``) to the library,
and closes it when the step ends. All bars of a process share one rich display (scoring
chunks on Dask threads run side by side), and while it is shown Prefect's console log lines
print above it. ``CXR_PROGRESS`` (``auto``: bars on a terminal only; ``always``; ``never``)
decides the terminal part; artifacts are published inside a Prefect run whatever it says.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from cxrmodel.progress import BatchCallback, ProgressCallback
from tasks.artifacts import in_prefect_run

_log = logging.getLogger("cxr.progress")
_lock = threading.Lock()
_display: Progress | None = None
_users = 0
_swapped: list[tuple[logging.Handler, Console]] = []


class RateColumn(ProgressColumn):
    """Units per second, e.g. ``41.2 img/s``."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        if speed is None:
            return Text("")
        rate = f"{speed:,.1f} {unit}/s" if speed >= 1 else f"{60 * speed:,.1f} {unit}/min"
        return Text(rate, style="progress.data.speed")


def _terminal_wanted() -> bool:
    mode = os.environ.get("CXR_PROGRESS", "auto").lower()
    if mode == "never":
        return False
    return mode == "always" or Console(stderr=True).is_terminal


def _acquire_display() -> Progress | None:
    """The process's shared rich display (started on first use), or None without a terminal."""
    global _display, _users
    with _lock:
        if _display is None:
            if not _terminal_wanted():
                return None
            console = Console(stderr=True, force_terminal=os.environ.get("CXR_PROGRESS") == "always" or None)
            _display = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                RateColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
            )
            _route_prefect_logs(console)
            _display.start()
        _users += 1
        return _display


def _release_display() -> None:
    global _display, _users
    with _lock:
        _users -= 1
        if _users <= 0 and _display is not None:
            _display.stop()
            _display, _users = None, 0
            for handler, console in _swapped:
                handler.console = console
            _swapped.clear()


def _route_prefect_logs(console: Console) -> None:
    """Prefect's console handlers print through ``console`` while the bars are shown, so their
    lines land above the bars instead of through them."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler) and all(handler is not h for h, _ in _swapped):
                _swapped.append((handler, handler.console))
                handler.console = console


@dataclass
class Row:
    """One line of the terminal display (a no-op without one)."""

    display: Progress | None
    task_id: int | None

    def update(self, completed: float, total: float | None = None, description: str | None = None) -> None:
        if self.display is None or self.task_id is None:
            return
        values = {"completed": completed}
        if total is not None:
            values["total"] = total
        if description is not None:
            values["description"] = description
        self.display.update(self.task_id, **values)

    def reset(self, total: float, description: str | None = None) -> None:
        if self.display is not None and self.task_id is not None:
            self.display.reset(self.task_id, total=total, **({"description": description} if description else {}))


@dataclass
class StageProgress:
    """A step's terminal rows and its progress artifact under ``key`` (Prefect's key alphabet)."""

    key: str
    title: str
    min_interval: float = 2.0
    artifact_id: object = None
    _display: Progress | None = field(default=None, init=False, repr=False)
    _rows: list[Row] = field(default_factory=list, init=False, repr=False)
    _last_push: float = field(default=0.0, init=False, repr=False)
    _last_fraction: float = field(default=-1.0, init=False, repr=False)

    def __enter__(self) -> StageProgress:
        self._display = _acquire_display()
        if in_prefect_run():
            try:
                from prefect.artifacts import create_progress_artifact

                self.artifact_id = create_progress_artifact(0.0, key=self.key, description=f"{self.title}: starting")
            except Exception:  # noqa: BLE001 - progress must never fail the step it watches
                _log.warning("could not create the progress artifact %s", self.key, exc_info=True)
        self._last_push = time.monotonic()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self._last_fraction < 1.0:
            self.publish(1.0, f"{self.title}: done", force=True)
        if self._display is not None:
            _release_display()
            self._display = None

    def row(self, description: str, total: float | None, unit: str = "it") -> Row:
        """A new terminal line (rate in ``unit``/s, ETA)."""
        task_id = self._display.add_task(description, total=total, unit=unit) if self._display is not None else None
        row = Row(self._display, task_id)
        self._rows.append(row)
        return row

    def publish(self, fraction: float, description: str, force: bool = False) -> None:
        """Update the artifact to ``fraction`` (0-1) unless the last update is under
        ``min_interval`` seconds old (the first and the final update always go out)."""
        now = time.monotonic()
        if self.artifact_id is None or (not force and fraction < 1.0 and now - self._last_push < self.min_interval):
            return
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self.artifact_id, round(100.0 * min(max(fraction, 0.0), 1.0), 1), description)
        except Exception:  # noqa: BLE001 - see __enter__
            _log.warning("could not update the progress artifact %s", self.key, exc_info=True)
            self.artifact_id = None
        self._last_push, self._last_fraction = now, fraction

    def callback(self, description: str, unit: str = "it") -> ProgressCallback:
        """A library callback that moves one row and the artifact."""
        row = self.row(description, None, unit)

        def on_progress(completed: int, total: int) -> None:
            row.update(completed, total)
            self.publish(completed / total if total else 1.0, f"{description}: {completed}/{total} {unit}")

        return on_progress


def training_progress(stage: StageProgress, epochs: int) -> BatchCallback:
    """``fit``'s ``on_batch``: an epochs row, a batches row for the current epoch, and the
    artifact at the fraction of all batches done."""
    epochs_row = stage.row("training epochs", epochs, "epoch")
    batches_row = stage.row("batches", None, "batch")

    def on_batch(epoch: int, done: int, n_batches: int) -> None:
        if done == 1:
            batches_row.reset(n_batches, f"epoch {epoch}/{epochs} batches")
        batches_row.update(done, n_batches)
        if done == n_batches:
            epochs_row.update(epoch)
        fraction = (epoch - 1 + done / max(n_batches, 1)) / epochs
        stage.publish(fraction, f"epoch {epoch}/{epochs}, batch {done}/{n_batches}")

    return on_batch
