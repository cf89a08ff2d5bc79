"""Training runs and their per-epoch metrics.

``record_epoch`` is strict: a metric that is not a column of ``epoch_metrics`` is refused
(``ValueError`` naming it) rather than dropped. Every function takes an open session and
leaves the transaction to the caller; runs leave as :class:`db.entities.TrainingRunInfo`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import runs, validation
from db.checks import require_columns
from db.entities import TrainingRunInfo
from db.models import EpochMetric, TrainingRun, utcnow
from db.statuses import RunStatus
from db.upsert import upsert

#: The metric columns of ``epoch_metrics``, in table order.
EPOCH_COLUMNS = tuple(c.name for c in EpochMetric.__table__.columns if c.name not in ("id", "training_run_id"))


def start_training_run(session: Session, **fields: Any) -> TrainingRunInfo:
    """A ``running`` training run (``architecture``, ``config``, ``device``, ``n_train``, ``n_val``, ``flow_run_id``)."""
    run = TrainingRun(status=RunStatus.RUNNING, heartbeat_at=utcnow(), **fields)
    session.add(run)
    session.flush()
    return TrainingRunInfo.from_row(run)


def record_epoch(session: Session, training_run_id: int, metrics: Mapping[str, object]) -> None:
    """Store (or replace) one epoch's metrics (every key must be a column of ``epoch_metrics``)
    and beat the run's heart."""
    require_columns("epoch metric", metrics, set(EPOCH_COLUMNS))
    row = {"training_run_id": training_run_id, **metrics}
    upsert(session, EpochMetric, [row], ["training_run_id", "epoch"], [c for c in row if c not in ("training_run_id", "epoch")])
    runs.beat(session, TrainingRun, training_run_id)


def fail_stale_training_runs(session: Session, stale_after: timedelta) -> list[tuple[int, str | None]]:
    """Mark ``failed`` every running training run without an epoch for ``stale_after``
    (:mod:`db.runs`); the error of one that left a folder names it (its checkpoint can be
    resumed with ``train.resume_checkpoint``, or the folder removed). Returns ``(id, folder)``."""
    stale = runs.expire_stale_runs(session, TrainingRun, stale_after, TrainingRun.output_dir)
    for run_id, folder in stale:
        if folder:
            run = _run(session, run_id)
            note = f"; its unregistered folder {folder} is kept (resume from {folder}/checkpoint.pt or delete it)"
            run.error = validation.fit_column(TrainingRun, "error", (run.error or "") + note)
    session.flush()
    return stale


def _run(session: Session, training_run_id: int) -> TrainingRun:
    run = session.get(TrainingRun, training_run_id)
    if run is None:
        raise ValueError(f"no training run with id {training_run_id}")
    return run


def fail_training_run(session: Session, training_run_id: int, error: str | None = None) -> TrainingRunInfo:
    run = _run(session, training_run_id)
    run.status, run.finished_at = RunStatus.FAILED, utcnow()
    run.error = validation.fit_column(TrainingRun, "error", error)
    session.flush()
    return TrainingRunInfo.from_row(run)


def complete_training_run(
    session: Session, training_run_id: int, model_version_id: int, best_epoch: int, best_metric: float
) -> TrainingRunInfo:
    """Close a run with the model version it produced and its best epoch."""
    run = _run(session, training_run_id)
    run.model_version_id, run.status, run.finished_at = model_version_id, RunStatus.COMPLETED, utcnow()
    run.best_epoch, run.best_metric = best_epoch, float(best_metric)
    session.flush()
    return TrainingRunInfo.from_row(run)


def epoch_history(session: Session, model_version_id: int) -> list[dict]:
    """The per-epoch metrics of the newest training run of a model version (oldest epoch first)."""
    run_id = session.scalar(
        select(TrainingRun.id).where(TrainingRun.model_version_id == model_version_id).order_by(TrainingRun.id.desc())
    )
    if run_id is None:
        return []
    epochs = session.scalars(select(EpochMetric).where(EpochMetric.training_run_id == run_id).order_by(EpochMetric.epoch))
    return [{c: getattr(e, c) for c in EPOCH_COLUMNS} for e in epochs]
