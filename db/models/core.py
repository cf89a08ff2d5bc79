"""Tables of studies, refreshes, the registry, training, thresholds and evaluations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from db.checks import checks
from db.models.base import Base, utcnow
from db.statuses import ModelStatus, PromotionAction, RunStatus, StudyStatus


class Study(Base):
    """One image: the NIH image index is the study key."""

    __tablename__ = "studies"
    __table_args__ = checks("studies")

    id: Mapped[int] = mapped_column(primary_key=True)
    study_key: Mapped[str] = mapped_column(String(128), unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    follow_up: Mapped[int | None]
    age: Mapped[float | None] = mapped_column(Float)
    sex: Mapped[str | None] = mapped_column(String(1))
    view: Mapped[str | None] = mapped_column(String(2))
    source: Mapped[str] = mapped_column(String(32))
    split: Mapped[str | None] = mapped_column(String(16), index=True)
    image_path: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str | None] = mapped_column(String(64), index=True)  # an upload finds its study by it
    labelled: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default=StudyStatus.ACTIVE)
    #: Failed scoring tries since the file last changed; at ``max_attempts`` the study is ``failed``.
    scoring_attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    labels: Mapped[list[StudyLabel]] = relationship(back_populates="study", cascade="all, delete-orphan")


class StudyLabel(Base):
    """A positive finding of a labelled study (absent rows are negatives: 14 x 112k rows of
    zeros would make up most of the table and say nothing)."""

    __tablename__ = "study_labels"

    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True)
    finding: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(SmallInteger)

    study: Mapped[Study] = relationship(back_populates="labels")


class RefreshRun(Base):
    __tablename__ = "refresh_runs"
    __table_args__ = checks("refresh_runs")

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    location: Mapped[str] = mapped_column(Text)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    n_rows: Mapped[int] = mapped_column(default=0)
    n_added: Mapped[int] = mapped_column(default=0)
    n_updated: Mapped[int] = mapped_column(default=0)
    n_unchanged: Mapped[int] = mapped_column(default=0)
    n_quarantined: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.RUNNING)
    #: Why a ``failed`` run failed (one line), shown by the night's scoring report.
    error: Mapped[str | None] = mapped_column(Text)
    #: Beaten by every step; a ``running`` run whose beat is old lost its process (:mod:`db.runs`).
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class QuarantinedRow(Base):
    """A source row that could not become a study, with the reason. Never silently dropped."""

    __tablename__ = "quarantined_rows"
    __table_args__ = (UniqueConstraint("source", "row_key", "reason"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    refresh_run_id: Mapped[int] = mapped_column(ForeignKey("refresh_runs.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(String(32))
    row_key: Mapped[str] = mapped_column(String(256))
    row_number: Mapped[int | None]
    reason: Mapped[str] = mapped_column(String(512))
    raw: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = checks("model_versions")

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    artifact_path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=ModelStatus.CANDIDATE, index=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    parameter_count: Mapped[int | None]
    # A champion pinned by hand stays champion: automatic promotion leaves it alone until unpinned.
    pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The figure the registry ranked it by, and on what: never the test split (db.registry).
    selection_score: Mapped[float | None] = mapped_column(Float)
    selection_basis: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TrainingRun(Base):
    __tablename__ = "training_runs"
    __table_args__ = checks("training_runs")

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), index=True)
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    architecture: Mapped[str] = mapped_column(String(32))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    device: Mapped[str | None] = mapped_column(String(32))
    n_train: Mapped[int | None]
    n_val: Mapped[int | None]
    best_epoch: Mapped[int | None]
    best_metric: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.RUNNING)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)
    output_dir: Mapped[str | None] = mapped_column(Text)  # checkpoint and log; named in a stale run's error
    resumed_from: Mapped[str | None] = mapped_column(Text)

    epochs: Mapped[list[EpochMetric]] = relationship(cascade="all, delete-orphan", order_by="EpochMetric.epoch")


class EpochMetric(Base):
    __tablename__ = "epoch_metrics"
    __table_args__ = (UniqueConstraint("training_run_id", "epoch"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    training_run_id: Mapped[int] = mapped_column(ForeignKey("training_runs.id", ondelete="CASCADE"))
    epoch: Mapped[int]
    train_loss: Mapped[float] = mapped_column(Float)
    val_loss: Mapped[float] = mapped_column(Float)
    mean_precision: Mapped[float] = mapped_column(Float)
    mean_recall: Mapped[float] = mapped_column(Float)
    macro_f1: Mapped[float] = mapped_column(Float)
    mean_auroc: Mapped[float | None] = mapped_column(Float)
    learning_rate: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    images_per_second: Mapped[float | None] = mapped_column(Float)


class ThresholdSet(Base):
    __tablename__ = "threshold_sets"
    __table_args__ = checks("threshold_sets")

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    method: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    split: Mapped[str] = mapped_column(String(16), default="val")
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    thresholds: Mapped[list[Threshold]] = relationship(cascade="all, delete-orphan")


class Threshold(Base):
    __tablename__ = "thresholds"

    threshold_set_id: Mapped[int] = mapped_column(ForeignKey("threshold_sets.id", ondelete="CASCADE"), primary_key=True)
    finding: Mapped[str] = mapped_column(String(32), primary_key=True)
    threshold: Mapped[float] = mapped_column(Float)
    note: Mapped[str | None] = mapped_column(String(256))


class Evaluation(Base):
    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("model_version_id", "threshold_set_id", "split"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    threshold_set_id: Mapped[int | None] = mapped_column(ForeignKey("threshold_sets.id"))
    split: Mapped[str] = mapped_column(String(16))
    n_studies: Mapped[int]
    macro_auroc: Mapped[float | None] = mapped_column(Float)
    micro_auroc: Mapped[float | None] = mapped_column(Float)
    macro_f1: Mapped[float] = mapped_column(Float)
    micro_f1: Mapped[float] = mapped_column(Float)
    macro_precision: Mapped[float] = mapped_column(Float)
    micro_precision: Mapped[float] = mapped_column(Float)
    macro_recall: Mapped[float] = mapped_column(Float)
    micro_recall: Mapped[float] = mapped_column(Float)
    exact_match: Mapped[float] = mapped_column(Float)
    hamming_loss: Mapped[float] = mapped_column(Float)
    accuracy: Mapped[float] = mapped_column(Float)
    lrap: Mapped[float | None] = mapped_column(Float)
    mean_brier: Mapped[float] = mapped_column(Float)
    inference_ms_per_image: Mapped[float | None] = mapped_column(Float)
    # 95 % bootstrap intervals, resampling patients (n_bootstrap resamples).
    macro_auroc_ci_low: Mapped[float | None] = mapped_column(Float)
    macro_auroc_ci_high: Mapped[float | None] = mapped_column(Float)
    macro_f1_ci_low: Mapped[float | None] = mapped_column(Float)
    macro_f1_ci_high: Mapped[float | None] = mapped_column(Float)
    n_bootstrap: Mapped[int | None]
    mean_ece: Mapped[float | None] = mapped_column(Float)
    calibration_method: Mapped[str | None] = mapped_column(String(16))
    calibration: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    report_path: Mapped[str | None] = mapped_column(Text)
    bundle_path: Mapped[str | None] = mapped_column(Text)
    #: The evaluation's own arrays (labels, probabilities, study keys, map): ``predictions.npz``
    #: in ``<model folder>/evaluations/<id>/``, so a later evaluation never overwrites them.
    arrays_path: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    class_metrics: Mapped[list[ClassMetric]] = relationship(cascade="all, delete-orphan")
    subgroup_metrics: Mapped[list[SubgroupMetric]] = relationship(cascade="all, delete-orphan")


class ClassMetric(Base):
    __tablename__ = "class_metrics"

    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True)
    finding: Mapped[str] = mapped_column(String(32), primary_key=True)
    n_positive: Mapped[int]
    auroc: Mapped[float | None] = mapped_column(Float)
    pr_auc: Mapped[float | None] = mapped_column(Float)
    f1: Mapped[float] = mapped_column(Float)
    precision: Mapped[float] = mapped_column(Float)
    recall: Mapped[float] = mapped_column(Float)
    specificity: Mapped[float] = mapped_column(Float)
    npv: Mapped[float] = mapped_column(Float)
    brier: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    tp: Mapped[int]
    fp: Mapped[int]
    tn: Mapped[int]
    fn: Mapped[int]
    auroc_ci_low: Mapped[float | None] = mapped_column(Float)
    auroc_ci_high: Mapped[float | None] = mapped_column(Float)
    f1_ci_low: Mapped[float | None] = mapped_column(Float)
    f1_ci_high: Mapped[float | None] = mapped_column(Float)
    ece: Mapped[float | None] = mapped_column(Float)
    # Brier and ECE after the evaluation's probability calibration (None when uncalibrated).
    brier_calibrated: Mapped[float | None] = mapped_column(Float)
    ece_calibrated: Mapped[float | None] = mapped_column(Float)


class SubgroupMetric(Base):
    """Aggregate metrics of one evaluation restricted to a subgroup (sex, age band, view)."""

    __tablename__ = "subgroup_metrics"

    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True)
    attribute: Mapped[str] = mapped_column(String(16), primary_key=True)
    group_name: Mapped[str] = mapped_column(String(32), primary_key=True)
    n_studies: Mapped[int]
    n_positive_labels: Mapped[int | None]
    macro_auroc: Mapped[float | None] = mapped_column(Float)
    macro_f1: Mapped[float | None] = mapped_column(Float)
    micro_f1: Mapped[float | None] = mapped_column(Float)
    exact_match: Mapped[float | None] = mapped_column(Float)
    hamming_loss: Mapped[float | None] = mapped_column(Float)
    mean_brier: Mapped[float | None] = mapped_column(Float)
    mean_ece: Mapped[float | None] = mapped_column(Float)


class Promotion(Base):
    __tablename__ = "promotions"
    __table_args__ = checks("promotions")

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    previous_champion_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    reason: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(16), default=PromotionAction.PROMOTE, server_default="promote")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
