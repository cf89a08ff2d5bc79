"""What a person types, resolved: model versions by id, name, ``latest`` or ``champion``;
evaluations by id or ``latest``; the registry and the recent runs as one overview each.

A reference that names nothing raises :class:`NotFound` (a :class:`cxrmodel.errors.UserError`:
the command line prints its message in one line and Prefect never retries it). Functions take
an open session and leave the transaction to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cxrmodel.errors import UserError
from db.entities import EvaluationInfo, ModelVersionInfo
from db.models import EpochMetric, Evaluation, ModelVersion, RefreshRun, ScoringRun, Study, TrainingRun
from db.statuses import ModelStatus, ScoringTrigger, StudyStatus

LATEST = "latest"
CHAMPION = "champion"


class NotFound(UserError, LookupError):
    """A model version, evaluation or champion that is not in the database."""


def _as_id(ref: str | int) -> int | None:
    if isinstance(ref, int):
        return ref
    text = str(ref).strip()
    return int(text) if text.isdigit() else None


def model_version(session: Session, ref: str | int) -> ModelVersionInfo:
    """The version ``ref`` names: an id, a name, ``latest`` (the newest) or ``champion``."""
    text = str(ref).strip()
    if text == CHAMPION:
        row = session.scalar(select(ModelVersion).where(ModelVersion.status == ModelStatus.CHAMPION))
        if row is None:
            raise NotFound("no champion yet: train and evaluate a model first (cxr train, cxr evaluate latest)")
    elif text == LATEST:
        row = session.scalar(select(ModelVersion).order_by(ModelVersion.id.desc()).limit(1))
        if row is None:
            raise NotFound("no model versions yet: train one first (cxr train)")
    else:
        version_id = _as_id(text)
        row = session.get(ModelVersion, version_id) if version_id is not None else None
        if row is None:
            row = session.scalar(select(ModelVersion).where(ModelVersion.name == text))
        if row is None:
            raise NotFound(f"no model version {text!r} (cxr models list shows ids and names)")
    return ModelVersionInfo.from_row(row)


def evaluation(session: Session, ref: str | int) -> EvaluationInfo:
    """The evaluation ``ref`` names: an id or ``latest`` (the newest)."""
    text = str(ref).strip()
    if text == LATEST:
        row = session.scalar(select(Evaluation).order_by(Evaluation.id.desc()).limit(1))
        if row is None:
            raise NotFound("no evaluations yet: evaluate a model first (cxr evaluate latest)")
    else:
        evaluation_id = _as_id(text)
        row = session.get(Evaluation, evaluation_id) if evaluation_id is not None else None
        if row is None:
            raise NotFound(f"no evaluation {text!r} (give an id from cxr runs, or latest)")
    return EvaluationInfo.from_row(row)


def require_labelled_studies(session: Session) -> int:
    """The number of active labelled studies with a split; :class:`NotFound` when there are none."""
    count = session.scalar(
        select(func.count())
        .select_from(Study)
        .where(Study.labelled.is_(True), Study.status == StudyStatus.ACTIVE, Study.split.is_not(None))
    )
    if not count:
        raise NotFound("no labelled studies yet: refresh a dataset first (cxr refresh DIR, or cxr demo)")
    return count


@dataclass(frozen=True)
class ModelSummary:
    """One line of ``cxr models list``: the version, its validation figures (best epoch of its
    training run), the figure the registry chose it on (validation or cross-validation) and its
    newest test evaluation."""

    id: int
    name: str
    kind: str
    status: str
    pinned: bool
    parent_id: int | None
    created_at: datetime
    val_macro_f1: float | None
    val_macro_auroc: float | None
    selection_score: float | None
    selection_basis: str | None
    test_evaluation_id: int | None
    test_macro_auroc: float | None
    test_macro_auroc_ci: tuple[float | None, float | None]
    test_macro_f1: float | None


def model_summaries(session: Session) -> list[ModelSummary]:
    """Every model version, oldest first, with its validation and test figures."""
    best_epochs = {
        run.model_version_id: (run.id, run.best_epoch)
        for run in session.scalars(select(TrainingRun).where(TrainingRun.model_version_id.is_not(None)))
    }
    epochs = {
        (e.training_run_id, e.epoch): e
        for e in session.scalars(
            select(EpochMetric).where(EpochMetric.training_run_id.in_([run_id for run_id, _ in best_epochs.values()]))
        )
    }
    newest_test: dict[int, Evaluation] = {}
    for ev in session.scalars(select(Evaluation).where(Evaluation.split == "test").order_by(Evaluation.id)):
        newest_test[ev.model_version_id] = ev
    rows = []
    for version in session.scalars(select(ModelVersion).order_by(ModelVersion.id)):
        best = epochs.get(best_epochs.get(version.id, (None, None)))
        test = newest_test.get(version.id)
        rows.append(
            ModelSummary(
                id=version.id,
                name=version.name,
                kind=str(version.kind),
                status=str(version.status),
                pinned=version.pinned,
                parent_id=version.parent_id,
                created_at=version.created_at,
                val_macro_f1=best.macro_f1 if best else None,
                val_macro_auroc=best.mean_auroc if best else None,
                selection_score=version.selection_score,
                selection_basis=None if version.selection_basis is None else str(version.selection_basis),
                test_evaluation_id=test.id if test else None,
                test_macro_auroc=test.macro_auroc if test else None,
                test_macro_auroc_ci=(test.macro_auroc_ci_low, test.macro_auroc_ci_high) if test else (None, None),
                test_macro_f1=test.macro_f1 if test else None,
            )
        )
    return rows


@dataclass(frozen=True)
class RunSummary:
    """One line of ``cxr runs``: which kind of run, its id, status, when, and what it counted.
    ``trigger`` is a scoring run's (``batch`` or ``on_demand``, one request to ``cxr api``);
    refresh, training and evaluation runs are batch work."""

    kind: str
    id: int
    status: str
    started_at: datetime
    finished_at: datetime | None
    counts: str
    trigger: str = ScoringTrigger.BATCH.value


def _when(row_time: datetime) -> datetime:
    return row_time if row_time.tzinfo is None else row_time.replace(tzinfo=None)


def recent_runs(session: Session, limit: int = 20, trigger: str | None = None) -> list[RunSummary]:
    """The newest refresh, training, evaluation and scoring runs, newest first (``limit`` in all).
    ``trigger`` keeps the runs of one trigger: ``on_demand`` the service's requests only,
    ``batch`` everything else (so a busy service does not push the nights off the list)."""
    if trigger is not None and trigger not in {t.value for t in ScoringTrigger}:
        raise UserError(f"unknown trigger {trigger!r}: batch or on_demand")
    if trigger == ScoringTrigger.ON_DEMAND:
        return [_scoring_summary(s, _version_names(session)) for s in _scoring_runs(session, limit, trigger)]
    names = _version_names(session)
    runs: list[RunSummary] = []
    for r in session.scalars(select(RefreshRun).order_by(RefreshRun.id.desc()).limit(limit)):
        counts = f"{r.n_rows} rows: {r.n_added} added, {r.n_updated} updated, {r.n_quarantined} quarantined"
        runs.append(RunSummary("refresh", r.id, str(r.status), r.started_at, r.finished_at, counts))
    for t in session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit)):
        model = names.get(t.model_version_id, "-")
        best = f", best epoch {t.best_epoch} ({t.best_metric:.3f})" if t.best_metric is not None else ""
        counts = f"{t.architecture}: {t.n_train} train / {t.n_val} val{best} -> {model}"
        runs.append(RunSummary("training", t.id, str(t.status), t.started_at, t.finished_at, counts))
    for e in session.scalars(select(Evaluation).order_by(Evaluation.id.desc()).limit(limit)):
        auroc = "-" if e.macro_auroc is None else f"{e.macro_auroc:.3f}"
        counts = f"{names.get(e.model_version_id)} on {e.split}: {e.n_studies} studies, macro AUROC {auroc}"
        runs.append(RunSummary("evaluation", e.id, "completed", e.created_at, e.created_at, counts))
    runs += [_scoring_summary(s, names) for s in _scoring_runs(session, limit, trigger)]
    runs.sort(key=lambda run: (_when(run.started_at), run.id), reverse=True)
    return runs[:limit]


def _version_names(session: Session) -> dict[int, str]:
    return dict(session.execute(select(ModelVersion.id, ModelVersion.name)).all())


def _scoring_runs(session: Session, limit: int, trigger: str | None) -> list[ScoringRun]:
    query = select(ScoringRun).order_by(ScoringRun.id.desc()).limit(limit)
    if trigger is not None:
        query = query.where(ScoringRun.trigger == trigger)
    return list(session.scalars(query))


def _scoring_summary(s: ScoringRun, names: dict[int, str]) -> RunSummary:
    counts = (
        f"{names.get(s.model_version_id)}: {s.n_scored} scored, {s.n_failed} failed, {s.n_skipped} skipped of {s.n_candidates}"
    )
    return RunSummary("scoring", s.id, str(s.status), s.started_at, s.finished_at, counts, str(s.trigger))
