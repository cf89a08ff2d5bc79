"""Scoring claims: a lease per study, so overlapping scoring runs split the work.

A run claims a chunk's studies in the database before it decodes or runs the model on them
(:func:`claim`, one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE <free or expired or mine>
RETURNING``: of two runs claiming one study at once, exactly one gets it). Its leases are renewed
with every committed batch (:func:`renew`) and released when it ends (:func:`release`); a run
whose process died stops renewing, so its leases expire and its studies are free again. A
study claimed by a live run is not pending for another run's plan. Correctness never rests on
the claims: predictions keep their own guard (``ON CONFLICT ... WHERE scoring_run_id``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import delete, exists, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import ScoringClaim, Study, utcnow

SLICE = 2000  # rows per INSERT ... VALUES: 3 parameters each, under SQLite's limit


def claim(session: Session, scoring_run_id: int, study_ids: Sequence[int], lease: timedelta) -> set[int]:
    """Claim ``study_ids`` for ``scoring_run_id`` until now + ``lease``; returns those it holds
    (free, expired, or already its own). Commit before the work, so others see the claim."""
    now = utcnow()
    expires = now + lease
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    held: set[int] = set()
    ids = list(study_ids)
    for start in range(0, len(ids), SLICE):
        rows = [{"study_id": sid, "scoring_run_id": scoring_run_id, "expires_at": expires} for sid in ids[start : start + SLICE]]
        stmt = insert(ScoringClaim).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=["study_id"],
            set_={"scoring_run_id": stmt.excluded.scoring_run_id, "expires_at": stmt.excluded.expires_at},
            where=or_(ScoringClaim.expires_at < now, ScoringClaim.scoring_run_id == stmt.excluded.scoring_run_id),
        ).returning(ScoringClaim.study_id)
        held.update(session.scalars(stmt))
    return held


def renew(session: Session, scoring_run_id: int, lease: timedelta) -> None:
    """Extend every lease of the run to now + ``lease`` (with each committed batch)."""
    session.execute(update(ScoringClaim).where(ScoringClaim.scoring_run_id == scoring_run_id).values(expires_at=utcnow() + lease))


def release(session: Session, scoring_run_id: int) -> None:
    session.execute(delete(ScoringClaim).where(ScoringClaim.scoring_run_id == scoring_run_id))


def claimed_by_a_live_run():
    """SQL condition on ``Study``: a run holds an unexpired claim on it."""
    return exists().where(ScoringClaim.study_id == Study.id, ScoringClaim.expires_at >= utcnow())
