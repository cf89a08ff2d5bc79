"""Threshold sets: per-finding decision thresholds of a model version, one of them active.

Every function takes an open session and leaves the transaction to the caller's
:func:`db.engine.session_scope`; sets leave as :class:`db.entities.ThresholdSetInfo`.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.entities import ThresholdSetInfo
from db.models import Threshold, ThresholdSet
from db.statuses import ThresholdMethod


def _info(tset: ThresholdSet) -> ThresholdSetInfo:
    return ThresholdSetInfo.from_row(
        tset,
        values={t.finding: t.threshold for t in tset.thresholds},
        notes={t.finding: t.note for t in tset.thresholds if t.note},
    )


def save_threshold_set(
    session: Session,
    model_version_id: int,
    method: ThresholdMethod | str,
    params: dict,
    values: Mapping[str, float],
    notes: Mapping[str, str],
) -> ThresholdSetInfo:
    """Store a threshold set and make it the model's active one."""
    session.execute(update(ThresholdSet).where(ThresholdSet.model_version_id == model_version_id).values(is_active=False))
    tset = ThresholdSet(model_version_id=model_version_id, method=str(method), params=params, is_active=True)
    tset.thresholds = [Threshold(finding=f, threshold=float(v), note=notes.get(f)) for f, v in values.items()]
    session.add(tset)
    session.flush()
    return _info(tset)


def active_threshold_set(session: Session, model_version_id: int) -> ThresholdSetInfo | None:
    tset = session.scalar(
        select(ThresholdSet)
        .where(ThresholdSet.model_version_id == model_version_id, ThresholdSet.is_active.is_(True))
        .order_by(ThresholdSet.id.desc())
    )
    return _info(tset) if tset is not None else None


def threshold_set(session: Session, threshold_set_id: int) -> ThresholdSetInfo | None:
    tset = session.get(ThresholdSet, threshold_set_id)
    return _info(tset) if tset is not None else None
