"""Evaluations: aggregate metrics of a model version on a split, one row per finding and per
subgroup, and the paths of the evaluation's arrays, report and bundle.

Writes are strict: a metric whose name is not a column is refused (``ValueError`` naming it)
rather than dropped, so a misspelled metric never vanishes. Every function takes an open
session and leaves the transaction to the caller; evaluations leave as
:class:`db.entities.EvaluationInfo` or :class:`EvaluationRecord`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.checks import column_names, require_columns
from db.entities import EvaluationInfo, ModelVersionInfo
from db.models import ClassMetric, Evaluation, ModelVersion, SubgroupMetric, ThresholdSet

#: Evaluation columns that are not aggregate metrics.
EVALUATION_NOT_METRICS = (
    "id",
    "model_version_id",
    "threshold_set_id",
    "split",
    "report_path",
    "bundle_path",
    "arrays_path",
    "created_at",
    "calibration",
)
_IDENTITY = {"id", "model_version_id", "threshold_set_id", "split", "created_at"}


def _subgroup_row(row: Mapping) -> SubgroupMetric:
    values = dict(row)
    values["group_name"] = str(values.pop("group", values.get("group_name")))
    require_columns("subgroup", values, column_names(SubgroupMetric, ["evaluation_id"]))
    return SubgroupMetric(**values)


def save_evaluation(
    session: Session,
    model_version_id: int,
    threshold_set_id: int | None,
    split: str,
    aggregates: Mapping[str, object],
    per_class: Sequence[Mapping],
    subgroups: Sequence[Mapping] = (),
    **extra: object,
) -> EvaluationInfo:
    """Store (or replace) the evaluation of a model version with a threshold set on a split,
    with its per-class rows and subgroup rows (keys ``attribute``, ``group`` and the metrics).
    ``extra`` holds further columns (``inference_ms_per_image``, ``arrays_path``, ...)."""
    values = {**aggregates, **extra}
    require_columns("evaluation", values, column_names(Evaluation, _IDENTITY))
    class_columns = column_names(ClassMetric, ["evaluation_id"])
    for row in per_class:
        require_columns("per-class", row, class_columns)
    metric_rows = [ClassMetric(**row) for row in per_class]
    subgroup_rows = [_subgroup_row(row) for row in subgroups]
    old = session.scalar(
        select(Evaluation).where(
            Evaluation.model_version_id == model_version_id,
            Evaluation.threshold_set_id.is_(None)
            if threshold_set_id is None
            else Evaluation.threshold_set_id == threshold_set_id,
            Evaluation.split == split,
        )
    )
    if old is not None:
        session.delete(old)
        session.flush()
    ev = Evaluation(model_version_id=model_version_id, threshold_set_id=threshold_set_id, split=split, **values)
    ev.class_metrics = metric_rows
    ev.subgroup_metrics = subgroup_rows
    session.add(ev)
    session.flush()
    return EvaluationInfo.from_row(ev)


def set_paths(session: Session, evaluation_id: int, **paths: str | None) -> EvaluationInfo:
    """Record where an evaluation's files are: ``arrays_path``, ``report_path``, ``bundle_path``."""
    require_columns("evaluation path", paths, {"arrays_path", "report_path", "bundle_path"})
    ev = session.get(Evaluation, evaluation_id)
    if ev is None:
        raise ValueError(f"no evaluation with id {evaluation_id}")
    for name, value in paths.items():
        setattr(ev, name, value)
    session.flush()
    return EvaluationInfo.from_row(ev)


def evaluation(session: Session, evaluation_id: int) -> EvaluationInfo | None:
    ev = session.get(Evaluation, evaluation_id)
    return EvaluationInfo.from_row(ev) if ev is not None else None


def latest_evaluation(session: Session, model_version_id: int, split: str) -> EvaluationInfo | None:
    """The newest evaluation of a model version on ``split``."""
    ev = session.scalar(
        select(Evaluation)
        .where(Evaluation.model_version_id == model_version_id, Evaluation.split == split)
        .order_by(Evaluation.id.desc())
    )
    return EvaluationInfo.from_row(ev) if ev is not None else None


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
    arrays_path: str | None = None


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
        arrays_path=ev.arrays_path,
    )


def latest_evaluations(session: Session, split: str = "test") -> list[tuple[EvaluationInfo, ModelVersionInfo]]:
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
    return [(EvaluationInfo.from_row(e), ModelVersionInfo.from_row(m)) for e, m in rows]
