"""The queries and writes the Prefect tasks need. Each function takes an open session and
leaves the transaction to the caller's :func:`db.engine.session_scope`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, delete, exists, func, insert, select, update
from sqlalchemy.orm import Session

from db.models import (
    ClassMetric,
    EpochMetric,
    Evaluation,
    ModelVersion,
    Prediction,
    Promotion,
    QuarantinedRow,
    RefreshRun,
    ScoringFailure,
    ScoringRun,
    Study,
    StudyLabel,
    SubgroupMetric,
    Threshold,
    ThresholdSet,
    TrainingRun,
)
from db.upsert import upsert

STUDY_FIELDS = ("patient_id", "follow_up", "age", "sex", "view", "source", "split", "image_path", "content_hash", "labelled")


def now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class StudyCounts:
    added: int
    updated: int
    unchanged: int


def sync_studies(session: Session, records: Sequence[dict], labels: dict[str, dict[str, int]] | None = None) -> StudyCounts:
    """Insert new studies and update changed ones (by ``study_key``). ``labels`` maps a study key
    to its 0/1 value per finding; only positive findings are stored (a labelled study without
    a ``study_labels`` row for a finding is negative for it). Running it twice with the same
    input changes nothing."""
    labels = labels or {}
    positives = {k: frozenset(f for f, v in vals.items() if v) for k, vals in labels.items()}
    keys = [r["study_key"] for r in records]
    existing: dict[str, tuple] = {}
    columns = [Study.id, Study.study_key, *(getattr(Study, f) for f in STUDY_FIELDS)]
    for start in range(0, len(keys), 5000):
        for row in session.execute(select(*columns).where(Study.study_key.in_(keys[start : start + 5000]))):
            existing[row.study_key] = row
    existing_positive: dict[int, set[str]] = {}
    ids = [row.id for row in existing.values()]
    for start in range(0, len(ids), 5000):
        for sid, finding in session.execute(
            select(StudyLabel.study_id, StudyLabel.finding).where(
                StudyLabel.study_id.in_(ids[start : start + 5000]), StudyLabel.value == 1
            )
        ):
            existing_positive.setdefault(sid, set()).add(finding)

    stamp = now()
    new_rows, changed = [], []
    for rec in records:
        row = existing.get(rec["study_key"])
        if row is None:
            new_rows.append({"study_key": rec["study_key"], "status": "active", "created_at": stamp, "updated_at": stamp,
                             **{f: rec.get(f) for f in STUDY_FIELDS}})
            continue
        fields_changed = any(getattr(row, f) != rec[f] for f in STUDY_FIELDS if f in rec and f != "split")
        labels_changed = rec["study_key"] in positives and existing_positive.get(row.id, set()) != positives[rec["study_key"]]
        if fields_changed or labels_changed:
            changed.append((row.id, rec))
    if new_rows:
        session.execute(insert(Study), new_rows)
    if changed:
        session.execute(
            update(Study),
            [{"id": sid, "updated_at": stamp, **{f: rec[f] for f in STUDY_FIELDS if f in rec}} for sid, rec in changed],
        )

    touched = [r["study_key"] for r in new_rows if r["study_key"] in positives]
    touched += [rec["study_key"] for _, rec in changed if rec["study_key"] in positives]
    if touched:
        id_of: dict[str, int] = {}
        for start in range(0, len(touched), 5000):
            id_of.update(session.execute(select(Study.study_key, Study.id).where(Study.study_key.in_(touched[start : start + 5000]))).all())
        changed_ids = [sid for sid, rec in changed if rec["study_key"] in positives]
        for start in range(0, len(changed_ids), 5000):
            session.execute(delete(StudyLabel).where(StudyLabel.study_id.in_(changed_ids[start : start + 5000])))
        label_rows = [{"study_id": id_of[k], "finding": f, "value": 1} for k in touched for f in sorted(positives[k])]
        if label_rows:
            session.execute(insert(StudyLabel), label_rows)
    return StudyCounts(added=len(new_rows), updated=len(changed), unchanged=len(records) - len(new_rows) - len(changed))


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


def labelled_studies(session: Session) -> list[Study]:
    return list(session.scalars(select(Study).where(Study.labelled.is_(True), Study.status == "active").order_by(Study.id)))


def label_table(session: Session, study_ids_: Iterable[int]) -> dict[int, dict[str, int]]:
    """Positive findings per study id (absent findings are negative)."""
    wanted = set(study_ids_)
    out: dict[int, dict[str, int]] = {}
    for sid, finding, value in session.execute(select(StudyLabel.study_id, StudyLabel.finding, StudyLabel.value)):
        if sid in wanted and value:
            out.setdefault(sid, {})[finding] = 1
    return out


def start_refresh(session: Session, source: str, location: str, flow_run_id: str | None) -> RefreshRun:
    run = RefreshRun(source=source, location=location, flow_run_id=flow_run_id, status="running")
    session.add(run)
    session.flush()
    return run


def finish_refresh(session: Session, refresh_run_id: int, totals: dict[str, int] | None = None, error: str | None = None) -> RefreshRun:
    """Close a refresh run: ``completed`` with its ``totals`` (rows, added, updated, unchanged,
    quarantined), or ``failed`` with ``error``."""
    run = session.get(RefreshRun, refresh_run_id)
    if totals is not None:
        run.n_rows, run.n_added, run.n_updated = totals["rows"], totals["added"], totals["updated"]
        run.n_unchanged, run.n_quarantined = totals["unchanged"], totals["quarantined"]
    run.status = "failed" if error is not None else "completed"
    run.error = error
    run.finished_at = now()
    return run


def latest_refresh_before(session: Session, moment: datetime) -> RefreshRun | None:
    """The newest refresh run started at or before ``moment`` (the one a scoring run followed)."""
    return session.scalars(
        select(RefreshRun).where(RefreshRun.started_at <= moment).order_by(RefreshRun.started_at.desc(), RefreshRun.id.desc()).limit(1)
    ).first()


def record_quarantine(session: Session, refresh_run_id: int, source: str, rows: Sequence[dict]) -> int:
    """Store quarantined rows (``row_key``, ``row_number``, ``reason``, ``raw``); a row already
    quarantined for the same reason is kept once, pointing at the latest run."""
    payload = [{"refresh_run_id": refresh_run_id, "source": source, "created_at": now(), **r} for r in rows]
    upsert(session, QuarantinedRow, payload, ["source", "row_key", "reason"], ["refresh_run_id", "row_number", "raw", "created_at"])
    return len(payload)


# --- model registry -------------------------------------------------------------------------


def register_model_version(session: Session, **fields) -> ModelVersion:
    version = ModelVersion(**fields)
    session.add(version)
    session.flush()
    return version


def champion(session: Session) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.status == "champion"))


def promote(session: Session, version_id: int, reason: str, action: str = "promote") -> None:
    """Make ``version_id`` the champion (the previous one retires) and record why.

    ``action`` says how: ``promote`` (automatic, after an evaluation), ``pin`` or ``rollback``
    (by hand, see :mod:`db.registry`). A new champion starts unpinned unless it was pinned.
    """
    previous = champion(session)
    if previous is not None and previous.id == version_id:
        return
    if previous is not None:
        previous.status = "retired"
        previous.pinned = False
    session.get(ModelVersion, version_id).status = "champion"
    session.add(Promotion(model_version_id=version_id, previous_champion_id=previous.id if previous else None, reason=reason, action=action))
    session.flush()


# --- training ----------------------------------------------------------------------------------


def start_training_run(session: Session, **fields) -> TrainingRun:
    run = TrainingRun(status="running", **fields)
    session.add(run)
    session.flush()
    return run


def record_epoch(session: Session, training_run_id: int, metrics: dict) -> None:
    columns = {c.name for c in EpochMetric.__table__.columns} - {"id", "training_run_id"}
    row = {"training_run_id": training_run_id, **{k: v for k, v in metrics.items() if k in columns}}
    upsert(session, EpochMetric, [row], ["training_run_id", "epoch"], [c for c in row if c not in ("training_run_id", "epoch")])


def epoch_history(session: Session, model_version_id: int) -> list[dict]:
    run = session.scalar(select(TrainingRun).where(TrainingRun.model_version_id == model_version_id).order_by(TrainingRun.id.desc()))
    if run is None:
        return []
    return [
        {c.name: getattr(e, c.name) for c in EpochMetric.__table__.columns if c.name not in ("id", "training_run_id")}
        for e in run.epochs
    ]


# --- thresholds ---------------------------------------------------------------------------------


def save_threshold_set(
    session: Session, model_version_id: int, method: str, params: dict, values: dict[str, float], notes: dict[str, str]
) -> ThresholdSet:
    """Store a threshold set and make it the model's active one."""
    session.execute(update(ThresholdSet).where(ThresholdSet.model_version_id == model_version_id).values(is_active=False))
    tset = ThresholdSet(model_version_id=model_version_id, method=method, params=params, is_active=True)
    tset.thresholds = [Threshold(finding=f, threshold=float(v), note=notes.get(f)) for f, v in values.items()]
    session.add(tset)
    session.flush()
    return tset


def active_threshold_set(session: Session, model_version_id: int) -> ThresholdSet | None:
    return session.scalar(
        select(ThresholdSet)
        .where(ThresholdSet.model_version_id == model_version_id, ThresholdSet.is_active.is_(True))
        .order_by(ThresholdSet.id.desc())
    )


# --- evaluation ---------------------------------------------------------------------------------


def save_evaluation(
    session: Session,
    model_version_id: int,
    threshold_set_id: int | None,
    split: str,
    aggregates: dict,
    per_class: Sequence[dict],
    subgroups: Sequence[dict] = (),
    **extra,
) -> Evaluation:
    """Store (or replace) the evaluation of a model version with a threshold set on a split,
    with its per-class rows and subgroup rows (keys ``attribute``, ``group`` and the metrics)."""
    old = session.scalar(
        select(Evaluation).where(
            Evaluation.model_version_id == model_version_id,
            Evaluation.threshold_set_id.is_(None) if threshold_set_id is None else Evaluation.threshold_set_id == threshold_set_id,
            Evaluation.split == split,
        )
    )
    if old is not None:
        session.delete(old)
        session.flush()
    columns = {c.name for c in Evaluation.__table__.columns}
    ev = Evaluation(
        model_version_id=model_version_id,
        threshold_set_id=threshold_set_id,
        split=split,
        **{k: v for k, v in {**aggregates, **extra}.items() if k in columns},
    )
    metric_columns = {c.name for c in ClassMetric.__table__.columns}
    ev.class_metrics = [ClassMetric(**{k: v for k, v in row.items() if k in metric_columns}) for row in per_class]
    subgroup_columns = {c.name for c in SubgroupMetric.__table__.columns}
    ev.subgroup_metrics = [
        SubgroupMetric(group_name=str(row["group"]), **{k: v for k, v in row.items() if k in subgroup_columns})
        for row in subgroups
    ]
    session.add(ev)
    session.flush()
    return ev


#: Evaluation columns that are not aggregate metrics.
EVALUATION_NOT_METRICS = ("id", "model_version_id", "threshold_set_id", "split", "report_path", "bundle_path", "created_at", "calibration")


@dataclass(frozen=True)
class EvaluationRecord:
    """One stored evaluation as plain values: the model version, its thresholds and every metric."""

    evaluation_id: int
    model_version_id: int
    model_name: str
    model_kind: str
    model_status: str
    split: str
    threshold_method: str | None
    thresholds: dict[str, float]
    threshold_notes: dict[str, str]
    aggregates: dict[str, object]
    per_class: list[dict]
    subgroups: list[dict]


def _row_dict(row, skip: Sequence[str] = ()) -> dict:
    return {c.name: getattr(row, c.name) for c in row.__table__.columns if c.name not in skip}


def evaluation_record(session: Session, evaluation_id: int) -> EvaluationRecord:
    """The :class:`EvaluationRecord` of one evaluation (``ValueError`` if there is none)."""
    ev = session.get(Evaluation, evaluation_id)
    if ev is None:
        raise ValueError(f"no evaluation with id {evaluation_id}")
    version = session.get(ModelVersion, ev.model_version_id)
    tset = session.get(ThresholdSet, ev.threshold_set_id) if ev.threshold_set_id else None
    return EvaluationRecord(
        evaluation_id=ev.id,
        model_version_id=version.id,
        model_name=version.name,
        model_kind=version.kind,
        model_status=version.status,
        split=ev.split,
        threshold_method=tset.method if tset else None,
        thresholds={t.finding: t.threshold for t in tset.thresholds} if tset else {},
        threshold_notes={t.finding: t.note for t in tset.thresholds if t.note} if tset else {},
        aggregates=_row_dict(ev, EVALUATION_NOT_METRICS),
        per_class=[_row_dict(m, ("evaluation_id",)) for m in ev.class_metrics],
        subgroups=[_row_dict(m, ("evaluation_id",)) for m in ev.subgroup_metrics],
    )


def latest_evaluations(session: Session, split: str = "test") -> list[tuple[Evaluation, ModelVersion]]:
    """The newest evaluation of every model version on ``split`` (for the comparison table)."""
    newest = (
        select(Evaluation.model_version_id, func.max(Evaluation.id).label("eid"))
        .where(Evaluation.split == split)
        .group_by(Evaluation.model_version_id)
        .subquery()
    )
    rows = session.execute(
        select(Evaluation, ModelVersion)
        .join(newest, Evaluation.id == newest.c.eid)
        .join(ModelVersion, ModelVersion.id == Evaluation.model_version_id)
        .order_by(ModelVersion.id)
    ).all()
    return [(e, m) for e, m in rows]


# --- scoring ---------------------------------------------------------------------------------------


def _pending(stmt, model_version_id: int, limit: int | None):
    """``stmt`` restricted to active unlabelled studies with no prediction from ``model_version_id``
    (whoever inserted them: the refresh flow or another system writing to ``studies``)."""
    scored = exists().where(and_(Prediction.study_id == Study.id, Prediction.model_version_id == model_version_id))
    stmt = stmt.where(Study.labelled.is_(False), Study.status == "active", ~scored).order_by(Study.id)
    return stmt if limit is None else stmt.limit(limit)


def studies_to_score(session: Session, model_version_id: int, limit: int | None = None) -> list[Study]:
    """Active unlabelled studies with no prediction from ``model_version_id``."""
    return list(session.scalars(_pending(select(Study), model_version_id, limit)))


def study_ids_to_score(session: Session, model_version_id: int, limit: int | None = None) -> list[int]:
    """The ids of :func:`studies_to_score`, in the same order."""
    return list(session.scalars(_pending(select(Study.id), model_version_id, limit)))


def studies_by_id(session: Session, ids: Sequence[int]) -> list[Study]:
    """The studies with these ids, in the order given (ids that no longer exist are left out)."""
    found: dict[int, Study] = {}
    for start in range(0, len(ids), 5000):
        found.update((s.id, s) for s in session.scalars(select(Study).where(Study.id.in_(ids[start : start + 5000]))))
    return [found[i] for i in ids if i in found]


def start_scoring_run(session: Session, **fields) -> ScoringRun:
    run = ScoringRun(status="running", heartbeat_at=now(), **fields)
    session.add(run)
    session.flush()
    return run


def abandon_stale_scoring_runs(session: Session, stale_after: timedelta) -> list[int]:
    """Mark ``abandoned`` every ``running`` run whose heartbeat (or start) is older than
    ``stale_after``: its process died (killed, machine lost) without saying so. Returns their ids."""
    last_beat = func.coalesce(ScoringRun.heartbeat_at, ScoringRun.started_at)
    stale = (
        update(ScoringRun)
        .where(ScoringRun.status == "running", last_beat < now() - stale_after)
        .values(status="abandoned", finished_at=now())
        .returning(ScoringRun.id)
    )
    return sorted(session.scalars(stale))


def add_scoring_counts(session: Session, scoring_run_id: int, scored: int = 0, failed: int = 0) -> None:
    """Add to a run's counts and beat its heart with one ``UPDATE ... SET n = n + k`` (safe when
    chunks of the run commit in parallel from several processes; commits with the batch it counts)."""
    session.execute(
        update(ScoringRun)
        .where(ScoringRun.id == scoring_run_id)
        .values(n_scored=ScoringRun.n_scored + scored, n_failed=ScoringRun.n_failed + failed, heartbeat_at=now())
    )


def finish_scoring_run(session: Session, scoring_run_id: int, status: str = "completed") -> ScoringRun:
    """End a run. A completed run's candidates that it neither scored nor failed were skipped
    (an overlapping run scored them first): ``n_skipped`` is the difference."""
    run = session.get(ScoringRun, scoring_run_id)
    run.status, run.finished_at = status, now()
    if status == "completed":
        run.n_skipped = run.n_candidates - run.n_scored - run.n_failed
    session.flush()
    return run


def _ids_among(session: Session, query, column, ids: Sequence[int], step: int = 5000) -> set[int]:
    """The ids ``query`` returns with ``column`` restricted to ``ids`` (in slices of ``step``,
    under the drivers' bound-parameter limits)."""
    found: set[int] = set()
    ids = list(ids)
    for start in range(0, len(ids), step):
        found.update(session.scalars(query.where(column.in_(ids[start : start + step]))))
    return found


def studies_done_in_run(session: Session, scoring_run_id: int, study_ids_: Sequence[int]) -> set[int]:
    """Those of ``study_ids_`` that run ``scoring_run_id`` already scored or recorded as failed
    (and counted): a retried chunk skips them."""
    scored = select(Prediction.study_id).where(Prediction.scoring_run_id == scoring_run_id).distinct()
    failed = select(ScoringFailure.study_id).where(ScoringFailure.scoring_run_id == scoring_run_id)
    return _ids_among(session, scored, Prediction.study_id, study_ids_) | _ids_among(session, failed, ScoringFailure.study_id, study_ids_)


def studies_scored_by_model(session: Session, model_version_id: int, study_ids_: Sequence[int]) -> set[int]:
    """Those of ``study_ids_`` that already have a prediction from ``model_version_id``."""
    query = select(Prediction.study_id).where(Prediction.model_version_id == model_version_id).distinct()
    return _ids_among(session, query, Prediction.study_id, study_ids_)


def write_predictions(session: Session, rows: Sequence[dict], *, keep_other_runs: bool = False) -> int:
    """Upsert prediction rows; a study keeps exactly one row per model version and finding.
    Returns the number of rows inserted or updated.

    With ``keep_other_runs`` an existing row is only replaced by the same scoring run (a retry):
    a study that an overlapping run committed first keeps that run's predictions and its rows
    are not counted. Runs write a study's rows in one transaction, so they all come from one
    run: the count divided by 14 is the number of studies this call won."""
    return upsert(
        session,
        Prediction,
        rows,
        ["study_id", "model_version_id", "finding"],
        ["probability", "decision", "threshold_set_id", "scoring_run_id", "created_at"],
        constants={"created_at": now()},
        update_if_equal=("scoring_run_id",) if keep_other_runs else (),
    )


def record_scoring_failures(session: Session, scoring_run_id: int, failures: dict[int, str]) -> None:
    rows = [{"scoring_run_id": scoring_run_id, "study_id": sid, "reason": reason, "created_at": now()} for sid, reason in failures.items()]
    upsert(session, ScoringFailure, rows, ["scoring_run_id", "study_id"], ["reason"])


@dataclass(frozen=True)
class ScoringSummary:
    """The headline of one scoring run: its counts, model, and positive decisions per finding."""

    scoring_run_id: int
    status: str
    model_name: str
    threshold_set_id: int
    n_candidates: int
    n_scored: int
    n_failed: int
    n_skipped: int
    started_at: datetime
    finished_at: datetime | None
    flagged: dict[str, int]


def scoring_summary(session: Session, scoring_run_id: int) -> ScoringSummary:
    """The :class:`ScoringSummary` of one scoring run (``ValueError`` if there is none)."""
    run = session.get(ScoringRun, scoring_run_id)
    if run is None:
        raise ValueError(f"no scoring run with id {scoring_run_id}")
    model_name = session.scalar(select(ModelVersion.name).where(ModelVersion.id == run.model_version_id))
    flagged = dict(
        session.execute(
            select(Prediction.finding, func.count())
            .where(Prediction.scoring_run_id == scoring_run_id, Prediction.decision.is_(True))
            .group_by(Prediction.finding)
        ).all()
    )
    return ScoringSummary(
        run.id, run.status, model_name, run.threshold_set_id, run.n_candidates, run.n_scored, run.n_failed, run.n_skipped,
        run.started_at, run.finished_at, {finding: int(n) for finding, n in flagged.items()},
    )
