"""Every query the three reports (evaluation, nightly scoring, dataset) need, read in the caller's
session and handed back as plain values: the frozen dataclasses of :mod:`db.entities` and of
this module, dicts, lists and a DataFrame, never ORM rows.

SQLAlchemy 2.0 style only. Queries another module owns (:mod:`db.evaluations`, :mod:`db.registry`,
:mod:`db.training`, :mod:`db.refresh`, :mod:`db.scoring`, :mod:`db.studies`) are reused, not
repeated. Every function takes an open session and leaves the transaction to the caller's
:func:`db.engine.session_scope`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cxrmodel.findings import FINDINGS
from db import evaluations, refresh, registry, scoring, studies, training
from db.entities import Entity, ModelVersionInfo, RefreshRunInfo, ScoringRunInfo, StudyInfo
from db.evaluations import EvaluationRecord
from db.models import Prediction, QuarantinedRow, ScoringFailure, Study, StudyLabel
from db.scoring import ScoringSummary
from db.statuses import StudyStatus

__all__ = [
    "COMPARISON_FIELDS",
    "SPLITS",
    "DatasetReportData",
    "EvaluationReportData",
    "QuarantinedRowInfo",
    "ScoringReportData",
    "comparison_rows",
    "dataset_report_data",
    "evaluation_arrays_file",
    "evaluation_report_data",
    "first_labelled_source",
    "labelled_sources",
    "labelled_studies_per_split",
    "quarantined_rows",
    "scoring_failures",
    "scoring_report_data",
    "studies_by_key",
    "top_studies",
    "training_prevalence",
]

SPLITS = ("train", "val", "test")
#: The columns of the comparison table read from each model version's latest evaluation.
COMPARISON_FIELDS = (
    "macro_auroc",
    "macro_auroc_ci_low",
    "macro_auroc_ci_high",
    "macro_f1",
    "micro_f1",
    "exact_match",
    "hamming_loss",
    "lrap",
    "mean_brier",
    "inference_ms_per_image",
)


def _labelled_active():
    return Study.labelled.is_(True), Study.status == StudyStatus.ACTIVE


# --------------------------------------------------------------------------- evaluation report


@dataclass(frozen=True)
class EvaluationReportData:
    """One evaluation with what its report shows beside it: the evaluated model version, the
    file holding the evaluation's arrays, the comparison rows, the training epochs, the active
    labelled studies per split and the data source."""

    record: EvaluationRecord
    model: ModelVersionInfo
    arrays_file: Path
    comparison: list[dict]
    epochs: list[dict]
    studies_per_split: dict[str, int]
    source: str | None


def evaluation_arrays_file(arrays_path: str | None, artifact_path: str, split: str) -> Path:
    """The npz of one evaluation's arrays (``y_true``, ``y_prob``, ``study_key``, optional
    ``y_prob_calibrated``, ``map_xy``, ``map_rows``): its own ``arrays_path`` when recorded,
    else the legacy ``predictions_<split>.npz`` beside the model's artefact (shared by every
    evaluation of that model on that split, so only the latest one's)."""
    if arrays_path is not None:
        return Path(arrays_path)
    return Path(artifact_path).parent / f"predictions_{split}.npz"


def comparison_rows(session: Session, split: str, current_model_version_id: int) -> list[dict]:
    """One row per model version with its latest evaluation on ``split`` (oldest version first):
    ``name, kind, status, parameter_count, is_current``, the figure the registry ranked it by
    and its basis (``selection_score``, ``selection_basis``: validation or cross-validation) and
    :data:`COMPARISON_FIELDS`."""
    return [
        {
            "name": m.name,
            "kind": m.kind,
            "status": m.status,
            "parameter_count": m.parameter_count,
            "is_current": m.id == current_model_version_id,
            "selection_score": m.selection_score,
            "selection_basis": str(m.selection_basis) if m.selection_basis else None,
            **{f: getattr(e, f) for f in COMPARISON_FIELDS},
        }
        for e, m in evaluations.latest_evaluations(session, split)
    ]


def labelled_studies_per_split(session: Session, splits: Sequence[str] = SPLITS) -> dict[str, int]:
    """The number of active labelled studies in each of ``splits`` (0 for an empty one)."""
    counts = dict(
        session.execute(
            select(Study.split, func.count()).where(*_labelled_active(), Study.split.in_(splits)).group_by(Study.split)
        ).all()
    )
    return {s: int(counts.get(s, 0)) for s in splits}


def first_labelled_source(session: Session) -> str | None:
    """The source of the first labelled study (by id), or None without any."""
    return session.scalar(select(Study.source).where(Study.labelled.is_(True)).order_by(Study.id).limit(1))


def evaluation_report_data(session: Session, evaluation_id: int) -> EvaluationReportData:
    """The :class:`EvaluationReportData` of one evaluation (``ValueError`` if there is none)."""
    record = evaluations.evaluation_record(session, evaluation_id)
    model = registry.model_version(session, record.model_version_id)
    return EvaluationReportData(
        record=record,
        model=model,
        arrays_file=evaluation_arrays_file(record.arrays_path, model.artifact_path, record.split),
        comparison=comparison_rows(session, record.split, model.id),
        epochs=training.epoch_history(session, model.parent_id or model.id),
        studies_per_split=labelled_studies_per_split(session),
        source=first_labelled_source(session),
    )


def studies_by_key(session: Session, study_keys: Iterable[str]) -> dict[str, StudyInfo]:
    """``study key -> study`` for these keys (unknown keys are left out): the image path and
    the patient features of the report's example studies."""
    keys = sorted(set(study_keys))
    found: dict[str, StudyInfo] = {}
    for start in range(0, len(keys), studies.SLICE):
        query = select(Study).where(Study.study_key.in_(keys[start : start + studies.SLICE]))
        found.update((s.study_key, StudyInfo.from_row(s)) for s in session.scalars(query))
    return found


# --------------------------------------------------------------------------- scoring report


@dataclass(frozen=True)
class ScoringReportData:
    """One scoring run with what its report shows: counts and flags per finding (``summary``),
    failures ``(study_key, reason)``, the top studies ``finding -> [(study_key, probability)]``,
    the training prevalence per finding and the latest refresh run before the scoring run."""

    run: ScoringRunInfo
    summary: ScoringSummary
    failures: list[tuple[str, str]]
    top_studies: dict[str, list[tuple[str, float]]]
    training_prevalence: dict[str, float | None]
    last_refresh: RefreshRunInfo | None


def scoring_failures(session: Session, scoring_run_id: int) -> list[tuple[str, str]]:
    """``(study_key, reason)`` of every study the run failed to score, by study key; the reason
    of a study that has now failed its last allowed try says so (it is skipped until its file
    changes)."""
    query = (
        select(Study.study_key, ScoringFailure.reason, Study.status, Study.scoring_attempts)
        .join(Study, Study.id == ScoringFailure.study_id)
        .where(ScoringFailure.scoring_run_id == scoring_run_id)
        .order_by(Study.study_key)
    )
    return [
        (key, f"{reason} (failed {tries} tries: skipped until its file changes)" if status == StudyStatus.FAILED else reason)
        for key, reason, status, tries in session.execute(query)
    ]


def top_studies(
    session: Session, scoring_run_id: int, findings: Sequence[str] = FINDINGS, n: int = 3
) -> dict[str, list[tuple[str, float]]]:
    """Per finding, the ``n`` studies of the run with the highest probability (highest first,
    ties by study key), as ``(study_key, probability)``; every finding is a key."""
    rank = (
        func.row_number()
        .over(partition_by=Prediction.finding, order_by=(Prediction.probability.desc(), Study.study_key))
        .label("rank")
    )
    ranked = (
        select(Prediction.finding, Study.study_key, Prediction.probability, rank)
        .join(Study, Study.id == Prediction.study_id)
        .where(Prediction.scoring_run_id == scoring_run_id, Prediction.finding.in_(findings))
        .subquery()
    )
    query = (
        select(ranked.c.finding, ranked.c.study_key, ranked.c.probability)
        .where(ranked.c.rank <= n)
        .order_by(ranked.c.finding, ranked.c.rank)
    )
    out: dict[str, list[tuple[str, float]]] = {f: [] for f in findings}
    for finding, key, probability in session.execute(query):
        out[finding].append((key, float(probability)))
    return out


def training_prevalence(session: Session, findings: Sequence[str] = FINDINGS) -> dict[str, float | None]:
    """Per finding, the fraction of labelled training studies that are positive (None without
    training studies)."""
    n_train = session.scalar(select(func.count()).select_from(Study).where(Study.labelled.is_(True), Study.split == "train"))
    positives = dict(
        session.execute(
            select(StudyLabel.finding, func.sum(StudyLabel.value))
            .join(Study, Study.id == StudyLabel.study_id)
            .where(Study.split == "train")
            .group_by(StudyLabel.finding)
        ).all()
    )
    return {f: (float(positives.get(f) or 0) / n_train) if n_train else None for f in findings}


def scoring_report_data(
    session: Session, scoring_run_id: int, findings: Sequence[str] = FINDINGS, n_top: int = 3
) -> ScoringReportData:
    """The :class:`ScoringReportData` of one scoring run (``ValueError`` if there is none)."""
    summary = scoring.scoring_summary(session, scoring_run_id)
    return ScoringReportData(
        run=scoring.scoring_run(session, scoring_run_id),
        summary=summary,
        failures=scoring_failures(session, scoring_run_id),
        top_studies=top_studies(session, scoring_run_id, findings, n_top),
        training_prevalence=training_prevalence(session, findings),
        last_refresh=refresh.latest_refresh_before(session, summary.started_at),
    )


# --------------------------------------------------------------------------- dataset report


@dataclass(frozen=True)
class QuarantinedRowInfo(Entity):
    """A source row that could not become a study, and why."""

    row_key: str
    row_number: int | None
    reason: str
    source: str
    refresh_run_id: int
    created_at: datetime


@dataclass(frozen=True)
class DatasetReportData:
    """The dataset report's data: the refresh run it describes (or None), the sources of the
    active labelled studies, every quarantined row (newest first) and the active labelled
    studies as :func:`db.studies.labelled_frame` gives them (None when there are none)."""

    refresh: RefreshRunInfo | None
    sources: list[str]
    quarantined: list[QuarantinedRowInfo]
    studies: pd.DataFrame | None


def labelled_sources(session: Session) -> list[str]:
    """The distinct non-empty sources of the active labelled studies, sorted."""
    return sorted(s for s in session.scalars(select(Study.source).where(*_labelled_active()).distinct()) if s)


def quarantined_rows(session: Session) -> list[QuarantinedRowInfo]:
    """Every quarantined row, newest first."""
    query = select(QuarantinedRow).order_by(QuarantinedRow.created_at.desc(), QuarantinedRow.id.desc())
    return [QuarantinedRowInfo.from_row(q) for q in session.scalars(query)]


def dataset_report_data(session: Session, refresh_run_id: int | None = None) -> DatasetReportData:
    """The :class:`DatasetReportData`, with the refresh run ``refresh_run_id`` when given
    (``ValueError`` if there is none)."""
    run = None
    if refresh_run_id is not None:
        run = refresh.refresh_run(session, refresh_run_id)
        if run is None:
            raise ValueError(f"no refresh run with id {refresh_run_id}")
    try:
        frame = studies.labelled_frame(session)
    except RuntimeError:  # no labelled study yet: the report still has the quarantine to show
        frame = None
    return DatasetReportData(refresh=run, sources=labelled_sources(session), quarantined=quarantined_rows(session), studies=frame)
