"""The PACS link's state: the pull's cursor, the instances it saw, the reports written back.

A pulled instance is registered as an unlabelled study (key: its SOP Instance UID) and its
``pacs_instances`` row in one transaction, so a pull killed mid-way never leaves a study the
link does not know, nor a row pointing at no study. Every function takes an open session and
leaves the transaction to the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.orm import Session

from cxrmodel.findings import FINDINGS
from db import studies
from db.models import ModelVersion, PacsCursor, PacsInstance, PacsObject, Prediction, Study, Threshold, utcnow
from db.statuses import PacsInstanceStatus, PacsObjectKind, PacsObjectStatus
from db.upsert import upsert

# --- the cursor -----------------------------------------------------------------------------------


def cursor(session: Session, source: str) -> datetime | None:
    """When the last complete search of ``source`` started (None before the first)."""
    return session.scalar(select(PacsCursor.searched_from).where(PacsCursor.source == source))


def _cursor_row(session: Session, source: str) -> PacsCursor:
    row = session.scalar(select(PacsCursor).where(PacsCursor.source == source))
    if row is None:
        row = PacsCursor(source=source)
        session.add(row)
    return row


def record_search(session: Session, source: str, started_at: datetime) -> None:
    """A search of ``source`` that started at ``started_at`` completed: the next starts there."""
    row = _cursor_row(session, source)
    row.searched_from, row.last_success_at, row.last_error = started_at, utcnow(), None


def record_pull_error(session: Session, source: str, error: str) -> None:
    """The pull of ``source`` failed (the cursor stays where it was)."""
    row = _cursor_row(session, source)
    row.last_error, row.last_error_at = error, utcnow()


# --- instances ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PacsInstanceInfo:
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    status: PacsInstanceStatus
    reason: str | None
    attempts: int
    study_id: int | None


def instances_seen(session: Session, sop_uids: Sequence[str]) -> dict[str, PacsInstanceInfo]:
    """The rows of those of ``sop_uids`` the pull saw before."""
    out: dict[str, PacsInstanceInfo] = {}
    uids = list(sop_uids)
    for start in range(0, len(uids), studies.SLICE):
        for row in session.scalars(
            select(PacsInstance).where(PacsInstance.sop_instance_uid.in_(uids[start : start + studies.SLICE]))
        ):
            out[row.sop_instance_uid] = _info(row)
    return out


def _info(row: PacsInstance) -> PacsInstanceInfo:
    return PacsInstanceInfo(
        row.sop_instance_uid,
        row.study_instance_uid,
        row.series_instance_uid,
        PacsInstanceStatus(row.status),
        row.reason,
        row.attempts,
        row.study_id,
    )


def our_objects(session: Session, sop_uids: Sequence[str]) -> set[str]:
    """Those of ``sop_uids`` that are objects we wrote back (the pull leaves them out)."""
    uids, out = list(sop_uids), set()
    for start in range(0, len(uids), studies.SLICE):
        out.update(
            session.scalars(
                select(PacsObject.sop_instance_uid).where(PacsObject.sop_instance_uid.in_(uids[start : start + studies.SLICE]))
            )
        )
    return out


def instances_to_retry(session: Session, source: str) -> list[PacsInstanceInfo]:
    """Instances whose retrieval failed (``retry``): the next pull fetches them whatever its window."""
    query = select(PacsInstance).where(PacsInstance.source == source, PacsInstance.status == PacsInstanceStatus.RETRY)
    return [_info(row) for row in session.scalars(query.order_by(PacsInstance.id))]


def record_instance(session: Session, fields: dict, status: PacsInstanceStatus, reason: str | None = None, **extra) -> None:
    """Insert or update the row of one instance (``fields``: source, the UIDs, accession number,
    modality, view) with its outcome; a failed try counts one more attempt."""
    stamp = utcnow()
    row = session.scalar(select(PacsInstance).where(PacsInstance.sop_instance_uid == fields["sop_instance_uid"]))
    if row is None:
        row = PacsInstance(**fields, first_seen_at=stamp, attempts=0)
        session.add(row)
    else:
        for key, value in fields.items():
            setattr(row, key, value)
    row.status, row.reason, row.updated_at = status, reason, stamp
    row.attempts = (row.attempts or 0) + (1 if status in (PacsInstanceStatus.RETRY, PacsInstanceStatus.FAILED) else 0)
    for key, value in extra.items():
        setattr(row, key, value)
    session.flush()


def register_instance(session: Session, fields: dict, record: dict) -> int:
    """Register a retrieved instance as an unlabelled study (``record``, :func:`db.studies.sync_studies`)
    and mark its row ``registered`` with the study's id, in the caller's transaction. Returns
    the study id. A record the ``studies`` table refuses raises ``ValueError`` (nothing written)."""
    counts = studies.sync_studies(session, [record])
    if counts.rejected:
        raise ValueError(counts.rejected[0].reason)
    study_id = session.scalar(select(Study.id).where(Study.study_key == record["study_key"]))
    record_instance(session, fields, PacsInstanceStatus.REGISTERED, None, study_id=study_id, content_hash=record["content_hash"])
    return study_id


def instance_counts(session: Session, source: str | None = None) -> dict[str, int]:
    """How many instances the pull saw, per outcome."""
    query = select(PacsInstance.status, func.count()).group_by(PacsInstance.status)
    if source is not None:
        query = query.where(PacsInstance.source == source)
    return {str(status): int(n) for status, n in session.execute(query)}


# --- reports written back -------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportWork:
    """One prediction to write back: the source instance, the model and its thresholds, the 14
    findings' probabilities and decisions (FINDINGS order)."""

    pacs_instance_id: int
    study_id: int
    image_path: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    model_version_id: int
    model_name: str
    model_sha256: str
    threshold_set_id: int
    probabilities: tuple[float, ...]
    thresholds: tuple[float, ...]
    decisions: tuple[bool, ...]
    attempts: int


def reports_to_send(session: Session, kind: PacsObjectKind = PacsObjectKind.SR, limit: int | None = None) -> list[ReportWork]:
    """Every registered instance with predictions whose report of ``kind`` (per model version
    and threshold set) is neither sent nor given up: never sent, or pending after a failure."""
    done = exists().where(
        and_(
            PacsObject.pacs_instance_id == PacsInstance.id,
            PacsObject.model_version_id == Prediction.model_version_id,
            PacsObject.threshold_set_id == Prediction.threshold_set_id,
            PacsObject.kind == kind,
            PacsObject.status.in_([PacsObjectStatus.SENT, PacsObjectStatus.FAILED]),
        )
    )
    keys = (
        select(PacsInstance.id, PacsInstance.study_id, Prediction.model_version_id, Prediction.threshold_set_id)
        .join(Prediction, Prediction.study_id == PacsInstance.study_id)
        .where(PacsInstance.status == PacsInstanceStatus.REGISTERED, ~done)
        .distinct()
        .order_by(PacsInstance.id, Prediction.model_version_id)
    )
    if limit is not None:
        keys = keys.limit(limit)
    work = []
    for instance_id, study_id, version_id, tset_id in session.execute(keys).all():
        instance = session.get(PacsInstance, instance_id)
        version = session.get(ModelVersion, version_id)
        rows = {
            p.finding: p
            for p in session.scalars(
                select(Prediction).where(Prediction.study_id == study_id, Prediction.model_version_id == version_id)
            )
        }
        cuts = dict(
            session.execute(select(Threshold.finding, Threshold.threshold).where(Threshold.threshold_set_id == tset_id)).all()
        )
        if set(rows) != set(FINDINGS):
            continue  # a partial prediction is never reported
        attempts = session.scalar(
            select(func.max(PacsObject.attempts)).where(
                PacsObject.pacs_instance_id == instance_id,
                PacsObject.model_version_id == version_id,
                PacsObject.threshold_set_id == tset_id,
                PacsObject.kind == kind,
            )
        )
        work.append(
            ReportWork(
                instance_id,
                study_id,
                session.scalar(select(Study.image_path).where(Study.id == study_id)),
                instance.study_instance_uid,
                instance.series_instance_uid,
                instance.sop_instance_uid,
                version_id,
                version.name,
                version.sha256,
                tset_id,
                tuple(float(rows[f].probability) for f in FINDINGS),
                tuple(float(cuts.get(f, float("nan"))) for f in FINDINGS),
                tuple(bool(rows[f].decision) for f in FINDINGS),
                int(attempts or 0),
            )
        )
    return work


def record_object(
    session: Session,
    work: ReportWork,
    kind: PacsObjectKind,
    uids: tuple[str, str],
    error: str | None,
    max_attempts: int,
    count_attempt: bool = True,
) -> PacsObjectStatus:
    """The outcome of one try to send ``work``'s object of ``kind`` (``uids``: its Series and SOP
    Instance UIDs): ``sent`` without ``error``; else one more attempt (unless ``count_attempt``
    is false: the PACS was down, which is not the object's fault) and ``failed`` at ``max_attempts``."""
    series_uid, sop_uid = uids
    stamp = utcnow()
    upsert(
        session,
        PacsObject,
        [
            {
                "pacs_instance_id": work.pacs_instance_id,
                "model_version_id": work.model_version_id,
                "threshold_set_id": work.threshold_set_id,
                "kind": str(kind),
                "study_instance_uid": work.study_instance_uid,
                "series_instance_uid": series_uid,
                "sop_instance_uid": sop_uid,
                "status": str(PacsObjectStatus.PENDING),
                "attempts": 0,
                "created_at": stamp,
            }
        ],
        ["sop_instance_uid"],
        [],
    )
    row = session.scalar(select(PacsObject).where(PacsObject.sop_instance_uid == sop_uid))
    if error is None:
        row.status, row.sent_at, row.last_error = PacsObjectStatus.SENT, stamp, None
        row.attempts += 1
    else:
        row.attempts += 1 if count_attempt else 0
        row.last_error = error
        row.status = PacsObjectStatus.FAILED if row.attempts >= max_attempts else PacsObjectStatus.PENDING
    session.flush()
    return PacsObjectStatus(row.status)


def object_counts(session: Session) -> dict[str, int]:
    query = select(PacsObject.status, func.count()).group_by(PacsObject.status)
    return {str(status): int(n) for status, n in session.execute(query)}


def object_rows(session: Session) -> list[dict]:
    """Every object written back, as plain dicts (reports, tests)."""
    cols = [c for c in PacsObject.__table__.columns]
    return [dict(row._mapping) for row in session.execute(select(*cols).order_by(PacsObject.id))]


def instance_rows(session: Session) -> list[dict]:
    """Every instance the pull saw, as plain dicts (reports, tests)."""
    cols = [c for c in PacsInstance.__table__.columns]
    return [dict(row._mapping) for row in session.execute(select(*cols).order_by(PacsInstance.id))]


def reset_object(session: Session, sop_uid: str) -> None:
    """A ``failed`` object pending again (an operator retries it by hand)."""
    session.execute(
        update(PacsObject).where(PacsObject.sop_instance_uid == sop_uid).values(status=PacsObjectStatus.PENDING, attempts=0)
    )
