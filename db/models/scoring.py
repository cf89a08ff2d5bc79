"""Tables of scoring: runs, claims, predictions (current and superseded) and per-study failures."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from db.checks import checks
from db.models.base import Base, utcnow
from db.statuses import ScoringStatus, ScoringTrigger


class ScoringRun(Base):
    """One night's scoring: ``running``, then ``completed`` (``n_scored + n_failed + n_skipped
    = n_candidates``; skipped studies were scored first by an overlapping run), ``failed``, or
    ``abandoned`` (its process died without saying so)."""

    __tablename__ = "scoring_runs"
    __table_args__ = checks("scoring_runs")

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    threshold_set_id: Mapped[int] = mapped_column(ForeignKey("threshold_sets.id"))
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=ScoringStatus.RUNNING)
    #: ``batch`` (a night, ``cxr score``) or ``on_demand`` (one study posted to ``cxr api``).
    trigger: Mapped[str] = mapped_column(String(16), default=ScoringTrigger.BATCH, server_default=ScoringTrigger.BATCH.value)
    n_candidates: Mapped[int] = mapped_column(default=0)
    n_scored: Mapped[int] = mapped_column(default=0)
    n_skipped: Mapped[int] = mapped_column(default=0)
    n_failed: Mapped[int] = mapped_column(default=0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: Set at the start and with every committed batch; a ``running`` run whose heartbeat is
    #: old lost its process and is marked ``abandoned`` by the next run's plan.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)
    #: The process that planned the run (a batch run's owner): on its host, a ``running`` run
    #: whose process is gone is abandoned by the next plan at once.
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)


class ScoringClaim(Base):
    """A study a scoring run is working on until ``expires_at`` (:mod:`db.claims`)."""

    __tablename__ = "scoring_claims"

    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True)
    scoring_run_id: Mapped[int] = mapped_column(ForeignKey("scoring_runs.id", ondelete="CASCADE"), index=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Prediction(Base):
    """One probability and decision per study, model version and finding."""

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("study_id", "model_version_id", "finding"),
        Index("ix_predictions_finding_probability", "finding", "probability"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    finding: Mapped[str] = mapped_column(String(32))
    probability: Mapped[float] = mapped_column(Float)
    decision: Mapped[bool] = mapped_column(Boolean)
    threshold_set_id: Mapped[int] = mapped_column(ForeignKey("threshold_sets.id"))
    scoring_run_id: Mapped[int | None] = mapped_column(ForeignKey("scoring_runs.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SupersededPrediction(Base):
    """A prediction of an image that has since changed: the study is scored again, both kept."""

    __tablename__ = "superseded_predictions"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    finding: Mapped[str] = mapped_column(String(32))
    probability: Mapped[float] = mapped_column(Float)
    decision: Mapped[bool] = mapped_column(Boolean)
    threshold_set_id: Mapped[int] = mapped_column(ForeignKey("threshold_sets.id"))
    scoring_run_id: Mapped[int | None] = mapped_column(ForeignKey("scoring_runs.id"))
    content_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    superseded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ScoringFailure(Base):
    __tablename__ = "scoring_failures"
    __table_args__ = (UniqueConstraint("scoring_run_id", "study_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scoring_run_id: Mapped[int] = mapped_column(ForeignKey("scoring_runs.id", ondelete="CASCADE"))
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
