"""Studies and their labels: idempotent syncing from a source, splits, statuses, and the
labelled studies as a frame for training and evaluation.

Every function takes an open session and leaves the transaction to the caller's
:func:`db.engine.session_scope`; rows leave as :class:`db.entities.StudyInfo` or plain values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd
from sqlalchemy import DateTime, delete, insert, literal, select, update
from sqlalchemy.orm import Session

from cxrmodel.data.metadata import QuarantineRecord
from cxrmodel.data.records import STUDY_FIELDS
from cxrmodel.findings import FINDINGS
from db import validation
from db.entities import StudyInfo
from db.models import Prediction, ScoringClaim, Study, StudyLabel, SupersededPrediction, utcnow
from db.statuses import StudyStatus

SLICE = 5000  # ids per IN (...): under the drivers' bound-parameter limits


@dataclass(frozen=True)
class StudyCounts:
    """What a sync did; ``rejected``: the records that do not fit the table (:mod:`db.validation`),
    as quarantine records with their reason, written by no one. ``rescored``: studies whose
    image changed (new content hash) and whose scoring starts again."""

    added: int
    updated: int
    unchanged: int
    rejected: tuple[QuarantineRecord, ...] = field(default=())
    rescored: int = 0


def reject_unfit(records: Sequence[dict]) -> tuple[list[dict], list[QuarantineRecord]]:
    """The records that fit the ``studies`` columns, and a quarantine record for each other one
    (reason: every column that does not fit)."""
    fit, rejected = [], []
    for rec in records:
        found = validation.problems(Study, {k: v for k, v in rec.items() if k == "study_key" or k in STUDY_FIELDS})
        if found:
            key = str(rec.get("study_key"))
            rejected.append(QuarantineRecord(key, None, f"value does not fit the database: {'; '.join(found)}", None))
        else:
            fit.append(rec)
    return fit, rejected


def _slices(values: Sequence) -> Iterable[Sequence]:
    for start in range(0, len(values), SLICE):
        yield values[start : start + SLICE]


def sync_studies(session: Session, records: Sequence[dict], labels: dict[str, dict[str, int]] | None = None) -> StudyCounts:
    """Insert new studies and update changed ones (by ``study_key``). ``labels`` maps a study key
    to its 0/1 value per finding; only positive findings are stored (a labelled study without
    a ``study_labels`` row for a finding is negative for it). Running it twice with the same
    input changes nothing. A record that does not fit the table's columns is left out and
    returned in ``rejected``; a study whose content hash changed is scored again
    (:func:`_restart_scoring`)."""
    records, rejected = reject_unfit(records)
    labels = labels or {}
    positives = {k: frozenset(f for f, v in vals.items() if v) for k, vals in labels.items()}
    keys = [r["study_key"] for r in records]
    existing: dict[str, tuple] = {}
    columns = [Study.id, Study.study_key, *(getattr(Study, f) for f in STUDY_FIELDS)]
    for chunk in _slices(keys):
        for row in session.execute(select(*columns).where(Study.study_key.in_(chunk))):
            existing[row.study_key] = row
    existing_positive: dict[int, set[str]] = {}
    for chunk in _slices([row.id for row in existing.values()]):
        query = select(StudyLabel.study_id, StudyLabel.finding).where(StudyLabel.study_id.in_(chunk), StudyLabel.value == 1)
        for sid, finding in session.execute(query):
            existing_positive.setdefault(sid, set()).add(finding)

    stamp = utcnow()
    new_rows, changed = [], []
    for rec in records:
        row = existing.get(rec["study_key"])
        if row is None:
            new_rows.append(
                {
                    "study_key": rec["study_key"],
                    "status": StudyStatus.ACTIVE,
                    "created_at": stamp,
                    "updated_at": stamp,
                    **{f: rec.get(f) for f in STUDY_FIELDS},
                }
            )
            continue
        fields_changed = any(getattr(row, f) != rec[f] for f in STUDY_FIELDS if f in rec and f != "split")
        labels_changed = rec["study_key"] in positives and existing_positive.get(row.id, set()) != positives[rec["study_key"]]
        if fields_changed or labels_changed:
            changed.append((row.id, rec))
    if new_rows:
        session.execute(insert(Study), new_rows)
    new_content = [
        sid for sid, rec in changed if "content_hash" in rec and rec["content_hash"] != existing[rec["study_key"]].content_hash
    ]
    _restart_scoring(session, new_content, stamp)
    if changed:
        session.execute(
            update(Study),
            [{"id": sid, "updated_at": stamp, **{f: rec[f] for f in STUDY_FIELDS if f in rec}} for sid, rec in changed],
        )
    _replace_labels(session, [r["study_key"] for r in new_rows], changed, positives)
    return StudyCounts(
        added=len(new_rows),
        updated=len(changed),
        unchanged=len(records) - len(new_rows) - len(changed),
        rejected=tuple(rejected),
        rescored=len(new_content),
    )


def content_key(name: str, content_hash: str) -> str:
    """The key of a file whose name an earlier, different file already holds:
    ``<stem>~<first 12 hex digits of its sha256><suffix>`` (still a plain file name)."""
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        return f"{name}~{content_hash[:12]}"
    return f"{stem}~{content_hash[:12]}.{suffix}"


def keys_by_content(session: Session, records: Sequence[dict]) -> list[dict]:
    """Incoming studies are a file's name *and* content: a record whose name an existing study
    holds with another content hash is a new study under :func:`content_key`, so a new night's
    file never overwrites an earlier study (its image, its predictions). A study with no content
    hash yet (inserted by another system) is the same study."""
    held: dict[str, str | None] = {}
    keys = [r["study_key"] for r in records]
    for chunk in _slices(keys):
        held.update(session.execute(select(Study.study_key, Study.content_hash).where(Study.study_key.in_(chunk))).all())
    out = []
    for rec in records:
        old = held.get(rec["study_key"])
        if old is None or rec.get("content_hash") in (None, old):
            out.append(rec)
        else:
            out.append({**rec, "study_key": content_key(rec["study_key"], rec["content_hash"])})
    return out


def _restart_scoring(session: Session, ids: Sequence[int], stamp) -> None:
    """Studies whose file changed (called before their new content hash is written): their
    predictions were of other pixels, so they move to ``superseded_predictions`` with the old
    hash (the study is pending again and both are kept), and their failed tries no longer count
    (a ``failed`` study is active again)."""
    columns = ("study_id", "model_version_id", "finding", "probability", "decision", "threshold_set_id", "scoring_run_id")
    for chunk in _slices(list(ids)):
        moved = (
            select(
                *(getattr(Prediction, c) for c in columns),
                Prediction.created_at,
                Study.content_hash,
                literal(stamp, DateTime(timezone=True)),
            )
            .join(Study, Study.id == Prediction.study_id)
            .where(Prediction.study_id.in_(chunk))
        )
        session.execute(
            insert(SupersededPrediction).from_select([*columns, "created_at", "content_hash", "superseded_at"], moved)
        )
        session.execute(delete(Prediction).where(Prediction.study_id.in_(chunk)))
        session.execute(delete(ScoringClaim).where(ScoringClaim.study_id.in_(chunk)))
        session.execute(update(Study).where(Study.id.in_(chunk)).values(scoring_attempts=0, last_error=None))
        session.execute(
            update(Study).where(Study.id.in_(chunk), Study.status == StudyStatus.FAILED).values(status=StudyStatus.ACTIVE)
        )


def _replace_labels(
    session: Session, new_keys: list[str], changed: list[tuple[int, dict]], positives: dict[str, frozenset]
) -> None:
    """The positive labels of new studies, and those of changed studies replaced."""
    touched = [k for k in new_keys if k in positives] + [rec["study_key"] for _, rec in changed if rec["study_key"] in positives]
    if not touched:
        return
    id_of: dict[str, int] = {}
    for chunk in _slices(touched):
        id_of.update(session.execute(select(Study.study_key, Study.id).where(Study.study_key.in_(chunk))).all())
    for chunk in _slices([sid for sid, rec in changed if rec["study_key"] in positives]):
        session.execute(delete(StudyLabel).where(StudyLabel.study_id.in_(chunk)))
    label_rows = [{"study_id": id_of[k], "finding": f, "value": 1} for k in touched for f in sorted(positives[k])]
    if label_rows:
        session.execute(insert(StudyLabel), label_rows)


def study_ids(session: Session) -> dict[str, int]:
    return dict(session.execute(select(Study.study_key, Study.id)).all())


def set_splits(session: Session, splits: dict[str, str]) -> int:
    """Write the split of each study key whose split differs; returns how many changed."""
    current = dict(session.execute(select(Study.study_key, Study.split)).all())
    id_of = study_ids(session)
    rows = [{"id": id_of[k], "split": v} for k, v in splits.items() if k in id_of and current.get(k) != v]
    if rows:
        session.execute(update(Study), rows)
    return len(rows)


def set_status(session: Session, study_keys: Iterable[str], status: StudyStatus) -> int:
    """Give the studies with these keys ``status``; returns how many rows changed."""
    keys, changed = list(study_keys), 0
    for chunk in _slices(keys):
        result = session.execute(update(Study).where(Study.study_key.in_(chunk)).values(status=status))
        changed += result.rowcount
    return changed


def labelled_studies(session: Session) -> list[StudyInfo]:
    """Every active labelled study, by id."""
    query = select(Study).where(Study.labelled.is_(True), Study.status == StudyStatus.ACTIVE).order_by(Study.id)
    return [StudyInfo.from_row(s) for s in session.scalars(query)]


def labelled_files(session: Session) -> list[tuple[str, str, str | None, StudyStatus]]:
    """``(study key, image path, content hash, status)`` of every labelled study, active or not:
    what the image cache is built from."""
    query = select(Study.study_key, Study.image_path, Study.content_hash, Study.status).where(Study.labelled.is_(True))
    return [(key, path, content_hash, StudyStatus(status)) for key, path, content_hash, status in session.execute(query)]


def label_table(session: Session, study_ids_: Iterable[int]) -> dict[int, dict[str, int]]:
    """Positive findings per study id (absent findings are negative)."""
    out: dict[int, dict[str, int]] = {}
    for chunk in _slices(sorted(set(study_ids_))):
        query = select(StudyLabel.study_id, StudyLabel.finding).where(StudyLabel.study_id.in_(chunk), StudyLabel.value == 1)
        for sid, finding in session.execute(query):
            out.setdefault(sid, {})[finding] = 1
    return out


def labelled_frame(session: Session) -> pd.DataFrame:
    """All active labelled studies with their split, patient features, image path and content
    hash, and 14 label columns (``RuntimeError`` when there are none)."""
    studies = labelled_studies(session)
    labels = label_table(session, [s.id for s in studies])
    frame = pd.DataFrame(
        [
            {
                "study_id": s.id,
                "study_key": s.study_key,
                "patient_id": s.patient_id,
                "age": s.age,
                "sex": s.sex,
                "view": s.view,
                "split": s.split,
                "image_path": s.image_path,
                "content_hash": s.content_hash,
                **{f: int(labels.get(s.id, {}).get(f, 0)) for f in FINDINGS},
            }
            for s in studies
        ]
    )
    if frame.empty:
        raise RuntimeError("no labelled studies in the database: run the refresh flow first")
    return frame


def image_paths(session: Session, study_keys: Iterable[str]) -> dict[str, str]:
    """``study key -> image path`` of the studies with these keys (unknown keys are left out)."""
    out: dict[str, str] = {}
    for chunk in _slices(sorted(set(study_keys))):
        out.update(session.execute(select(Study.study_key, Study.image_path).where(Study.study_key.in_(chunk))).all())
    return out


def active_labelled_findings(session: Session, study_keys: Iterable[str]) -> dict[str, tuple[list[str], str | None]]:
    """``study key -> (positive findings in FINDINGS order, split)`` of the active labelled
    studies among ``study_keys``."""
    rows = []
    for chunk in _slices(sorted(set(study_keys))):
        rows += session.execute(
            select(Study.id, Study.study_key, Study.split).where(
                Study.study_key.in_(chunk), Study.labelled.is_(True), Study.status == StudyStatus.ACTIVE
            )
        ).all()
    labels = label_table(session, [r.id for r in rows])
    return {r.study_key: ([f for f in FINDINGS if labels.get(r.id, {}).get(f)], r.split) for r in rows}
