"""On-demand scoring (``cxr api``): the study of an uploaded image, one scoring run per request
with its predictions, a study's predictions across model versions, and the registry with its
test metrics.

An uploaded image is identified by its content: the study whose ``content_hash`` (the file's
sha256) matches, whatever registered it (an earlier upload, or a refresh that saw the same
file), else a new unlabelled study keyed ``sha256-<hex>``. Sending the same image twice is one
study. Every function takes an open session and leaves the transaction to the caller, so a
request's study, run and predictions commit together or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cxrmodel.findings import FINDINGS
from db.entities import EvaluationInfo, ModelVersionInfo, ScoringRunInfo, StudyInfo
from db.evaluations import latest_evaluation
from db.models import ModelVersion, Prediction, ScoringRun, Study, utcnow
from db.registry import champion
from db.scoring import finish_scoring_run, start_scoring_run, write_predictions
from db.statuses import ScoringTrigger, StudyStatus
from db.thresholds import active_threshold_set
from db.upsert import upsert

UPLOAD_SOURCE = "upload"


def upload_study_key(content_hash: str) -> str:
    """The study key of an uploaded image that no study had yet: ``sha256-<64 hex>``."""
    return f"sha256-{content_hash}"


def study_by_content(session: Session, content_hash: str) -> StudyInfo | None:
    """The oldest study whose image file has this sha256."""
    row = session.scalar(select(Study).where(Study.content_hash == content_hash).order_by(Study.id).limit(1))
    return StudyInfo.from_row(row) if row is not None else None


def study_for_upload(
    session: Session, content_hash: str, image_path: str, age: float | None, sex: str | None, view: str | None
) -> StudyInfo:
    """The study of an uploaded image (see the module docstring). A study that an upload
    created takes the patient fields given now where they are known; a study that a refresh
    registered is left as it is. Two requests racing with the same new image end with one
    study (the insert does nothing on a key conflict)."""
    existing = study_by_content(session, content_hash)
    if existing is None:
        stamp = utcnow()
        key = upload_study_key(content_hash)
        row = {
            "study_key": key,
            "source": UPLOAD_SOURCE,
            "image_path": image_path,
            "content_hash": content_hash,
            "labelled": False,
            "status": StudyStatus.ACTIVE.value,
            "age": age,
            "sex": sex,
            "view": view,
            "created_at": stamp,
            "updated_at": stamp,
        }
        upsert(session, Study, [row], ["study_key"])
        return StudyInfo.from_row(session.scalar(select(Study).where(Study.study_key == key)))
    known = {k: v for k, v in {"age": age, "sex": sex, "view": view}.items() if v is not None}
    if existing.source == UPLOAD_SOURCE and any(getattr(existing, k) != v for k, v in known.items()):
        session.execute(update(Study).where(Study.id == existing.id).values(updated_at=utcnow(), **known))
        return StudyInfo.from_row(session.get(Study, existing.id))
    return existing


def record_on_demand_scoring(
    session: Session,
    study_id: int,
    model_version_id: int,
    threshold_set_id: int,
    probabilities: np.ndarray,
    decisions: np.ndarray,
) -> ScoringRunInfo:
    """One completed ``on_demand`` scoring run of one study and its 14 prediction rows (a
    study keeps one row per model version and finding: scoring it again replaces them)."""
    run = start_scoring_run(
        session,
        model_version_id=model_version_id,
        threshold_set_id=threshold_set_id,
        n_candidates=1,
        n_scored=1,
        trigger=ScoringTrigger.ON_DEMAND,
    )
    rows = [
        {
            "study_id": study_id,
            "model_version_id": model_version_id,
            "finding": finding,
            "probability": float(p),
            "decision": bool(d),
            "threshold_set_id": threshold_set_id,
            "scoring_run_id": run.id,
        }
        for finding, p, d in zip(FINDINGS, np.ravel(probabilities), np.ravel(decisions), strict=True)
    ]
    write_predictions(session, rows)
    return finish_scoring_run(session, run.id)


# --- reading --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionPredictions:
    """One model version's predictions of a study."""

    model_version_id: int
    model_name: str
    model_kind: str
    model_status: str
    threshold_set_id: int
    scoring_run_id: int | None
    trigger: str | None
    scored_at: datetime
    probabilities: dict[str, float]
    decisions: dict[str, bool]


def study_by_key(session: Session, study_key: str) -> StudyInfo | None:
    row = session.scalar(select(Study).where(Study.study_key == study_key))
    return StudyInfo.from_row(row) if row is not None else None


def study_predictions(session: Session, study_id: int) -> list[VersionPredictions]:
    """The study's predictions, one entry per model version, newest version first."""
    rows = session.execute(
        select(Prediction, ModelVersion.name, ModelVersion.kind, ModelVersion.status, ScoringRun.trigger)
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .outerjoin(ScoringRun, ScoringRun.id == Prediction.scoring_run_id)
        .where(Prediction.study_id == study_id)
        .order_by(Prediction.model_version_id.desc())
    ).all()
    grouped: dict[int, list] = {}
    for row in rows:
        grouped.setdefault(row[0].model_version_id, []).append(row)
    out = []
    for version_id, group in grouped.items():
        first, name, kind, status, trigger = group[0]
        by_finding = {p.finding: p for p, *_ in group}
        out.append(
            VersionPredictions(
                version_id,
                name,
                kind,
                status,
                first.threshold_set_id,
                first.scoring_run_id,
                trigger,
                max(p.created_at for p in by_finding.values()),
                {f: by_finding[f].probability for f in FINDINGS if f in by_finding},
                {f: by_finding[f].decision for f in FINDINGS if f in by_finding},
            )
        )
    return out


@dataclass(frozen=True)
class RegisteredModel:
    """A model version with its newest test evaluation and, for the champion, its thresholds."""

    version: ModelVersionInfo
    test: EvaluationInfo | None
    threshold_set_id: int | None
    thresholds: dict[str, float] | None


def registered_models(session: Session) -> list[RegisteredModel]:
    """Every model version, oldest first, with its newest test evaluation and active thresholds."""
    out = []
    for row in session.scalars(select(ModelVersion).order_by(ModelVersion.id)):
        tset = active_threshold_set(session, row.id)
        out.append(
            RegisteredModel(
                ModelVersionInfo.from_row(row),
                latest_evaluation(session, row.id, "test"),
                tset.id if tset else None,
                tset.values if tset else None,
            )
        )
    return out


def champion_with_thresholds(session: Session) -> RegisteredModel | None:
    """The champion, its newest test evaluation and its active threshold set (None: no champion)."""
    current = champion(session)
    if current is None:
        return None
    tset = active_threshold_set(session, current.id)
    return RegisteredModel(
        current, latest_evaluation(session, current.id, "test"), tset.id if tset else None, tset.values if tset else None
    )
