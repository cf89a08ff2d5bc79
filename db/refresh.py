"""Refresh runs and the rows they quarantined.

Every function takes an open session and leaves the transaction to the caller's
:func:`db.engine.session_scope`; runs leave as :class:`db.entities.RefreshRunInfo`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, is_dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from cxrmodel.data.metadata import QuarantineRecord
from db import runs, validation
from db.entities import RefreshRunInfo
from db.models import QuarantinedRow, RefreshRun, utcnow
from db.statuses import RunStatus
from db.upsert import upsert


@dataclass(frozen=True)
class RefreshTotals:
    """What a refresh (or one of its steps) did: source rows read, studies added, updated and
    unchanged, rows quarantined. Steps' totals add up with ``+`` (and :meth:`sum`)."""

    rows: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0

    def __add__(self, other: RefreshTotals) -> RefreshTotals:
        return RefreshTotals(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @classmethod
    def sum(cls, parts: Iterable[RefreshTotals]) -> RefreshTotals:
        total = cls()
        for part in parts:
            total = total + part
        return total


def start_refresh(session: Session, source: str, location: str, flow_run_id: str | None) -> RefreshRunInfo:
    run = RefreshRun(source=source, location=location, flow_run_id=flow_run_id, status=RunStatus.RUNNING, heartbeat_at=utcnow())
    session.add(run)
    session.flush()
    return RefreshRunInfo.from_row(run)


def beat(session: Session, refresh_run_id: int) -> None:
    """The refresh is alive (called by each step): see :mod:`db.runs`."""
    runs.beat(session, RefreshRun, refresh_run_id)


def fail_stale_refresh_runs(session: Session, stale_after: timedelta) -> list[int]:
    """Mark ``failed``, with the reason, every running refresh without a beat for ``stale_after``."""
    return [run_id for (run_id,) in runs.expire_stale_runs(session, RefreshRun, stale_after)]


def finish_refresh(
    session: Session, refresh_run_id: int, totals: RefreshTotals | None = None, error: str | None = None
) -> RefreshRunInfo:
    """Close a refresh run: ``completed`` with its ``totals``, or ``failed`` with ``error``."""
    run = session.get(RefreshRun, refresh_run_id)
    if run is None:
        raise ValueError(f"no refresh run with id {refresh_run_id}")
    if totals is not None:
        run.n_rows, run.n_added, run.n_updated = totals.rows, totals.added, totals.updated
        run.n_unchanged, run.n_quarantined = totals.unchanged, totals.quarantined
    run.status = RunStatus.FAILED if error is not None else RunStatus.COMPLETED
    run.error = validation.fit_column(RefreshRun, "error", error)
    run.finished_at = utcnow()
    session.flush()
    return RefreshRunInfo.from_row(run)


def refresh_run(session: Session, refresh_run_id: int) -> RefreshRunInfo | None:
    run = session.get(RefreshRun, refresh_run_id)
    return RefreshRunInfo.from_row(run) if run is not None else None


def latest_refresh_before(session: Session, moment: datetime) -> RefreshRunInfo | None:
    """The newest refresh run started at or before ``moment`` (the one a scoring run followed)."""
    run = session.scalars(
        select(RefreshRun)
        .where(RefreshRun.started_at <= moment)
        .order_by(RefreshRun.started_at.desc(), RefreshRun.id.desc())
        .limit(1)
    ).first()
    return RefreshRunInfo.from_row(run) if run is not None else None


def record_quarantine(session: Session, refresh_run_id: int, source: str, rows: Sequence[QuarantineRecord | Mapping]) -> int:
    """Store quarantined rows (:class:`QuarantineRecord`, or mappings with ``row_key``,
    ``row_number``, ``reason``, ``raw``); a row already quarantined for the same reason is kept
    once, pointing at the latest run. Texts are cut to fit their columns
    (:func:`db.validation.fit_to_columns`), so a quarantine record never fails the refresh."""
    stamp = utcnow()
    fitted = {}
    for r in rows:  # cut to fit the columns (a reason quoting a 600-character cell, a NUL byte)
        row = validation.fit_to_columns(QuarantinedRow, asdict(r) if is_dataclass(r) else dict(r), ("row_key", "reason", "raw"))
        fitted[(row["row_key"], row["reason"])] = row  # one row per key of the table, the last one kept
    payload = [{"refresh_run_id": refresh_run_id, "source": source, "created_at": stamp, **row} for row in fitted.values()]
    upsert(
        session, QuarantinedRow, payload, ["source", "row_key", "reason"], ["refresh_run_id", "row_number", "raw", "created_at"]
    )
    return len(payload)
