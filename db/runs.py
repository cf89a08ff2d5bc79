"""One stale-run rule for every kind of run (refresh, training, scoring).

A run beats its heart (``heartbeat_at``) as it works: each refresh step, each training epoch,
each committed scoring batch. A run still ``running`` whose last beat (or start) is older than
its kind's ``stale_after`` lost its process (killed, machine gone) without closing the row: the
next run of that kind marks it ``failed`` (refresh, training) or ``abandoned`` (scoring, whose
committed batches stay valid) with the reason, before it starts.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, update
from sqlalchemy.orm import Session

from db.models import RefreshRun, ScoringRun, TrainingRun, utcnow
from db.statuses import RunStatus, ScoringStatus

#: The status a stale run of each kind is given.
STALE_STATUS = {RefreshRun: RunStatus.FAILED, TrainingRun: RunStatus.FAILED, ScoringRun: ScoringStatus.ABANDONED}


def beat(session: Session, model: type, run_id: int) -> None:
    """The run is alive: ``heartbeat_at = now``."""
    session.execute(update(model).where(model.id == run_id).values(heartbeat_at=utcnow()))


def stale_reason(stale_after: timedelta) -> str:
    minutes = stale_after.total_seconds() / 60
    return f"no heartbeat for {minutes:g} minutes: its process was lost (killed or its machine gone) before it closed the run"


def expire_stale_runs(session: Session, model: type, stale_after: timedelta, *extra_columns) -> list[tuple]:
    """Close every ``running`` run of ``model`` whose heartbeat (or start) is older than
    ``stale_after`` with :data:`STALE_STATUS` and the reason. One ``UPDATE ... RETURNING``, so
    two runs starting at once never both see the same stale row. Returns ``(id, *extra)`` of
    each, by id."""
    now = utcnow()
    last_beat = func.coalesce(model.heartbeat_at, model.started_at)
    stale = (
        update(model)
        .where(model.status == RunStatus.RUNNING, last_beat < now - stale_after)
        .values(status=STALE_STATUS[model], finished_at=now, error=stale_reason(stale_after))
        .returning(model.id, *extra_columns)
    )
    return sorted(tuple(row) for row in session.execute(stale))
