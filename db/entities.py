"""What the store hands out: frozen dataclasses of plain values, never ORM rows.

Every query function of the repository modules (:mod:`db.studies`, :mod:`db.registry`, ...)
turns the rows it read into these before returning, so nothing outside ``db/`` holds a live
ORM object, lazy-loads a relationship after its session closed, or writes a row by setting an
attribute. Status and kind fields come back as their enums (:mod:`db.statuses`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

from cxrmodel.models.version_files import ModelVersionFiles
from db.statuses import (
    ModelKind,
    ModelStatus,
    RunStatus,
    ScoringStatus,
    ScoringTrigger,
    SelectionBasis,
    StudyStatus,
    ThresholdMethod,
)

E = TypeVar("E", bound="Entity")


class Entity:
    """Base of the entities: built from a row's attributes of the same names, enums converted."""

    enums: ClassVar[dict[str, type[StrEnum]]] = {}

    def __post_init__(self) -> None:
        for name, enum in self.enums.items():
            value = getattr(self, name)
            if value is not None and not isinstance(value, enum):
                object.__setattr__(self, name, enum(value))

    @classmethod
    def from_row(cls: type[E], row: object, **values: Any) -> E:
        """The entity of ``row`` (an ORM object or a result row); ``values`` fill or replace fields."""
        names = [f.name for f in fields(cls) if f.name not in values]  # type: ignore[arg-type]
        return cls(**{name: getattr(row, name) for name in names}, **values)


@dataclass(frozen=True)
class StudyInfo(Entity):
    enums: ClassVar = {"status": StudyStatus}

    id: int
    study_key: str
    patient_id: str | None
    follow_up: int | None
    age: float | None
    sex: str | None
    view: str | None
    source: str
    split: str | None
    image_path: str
    content_hash: str | None
    labelled: bool
    status: StudyStatus
    scoring_attempts: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class RefreshRunInfo(Entity):
    enums: ClassVar = {"status": RunStatus}

    id: int
    source: str
    location: str
    flow_run_id: str | None
    started_at: datetime
    finished_at: datetime | None
    n_rows: int
    n_added: int
    n_updated: int
    n_unchanged: int
    n_quarantined: int
    status: RunStatus
    error: str | None
    heartbeat_at: datetime | None


@dataclass(frozen=True)
class ModelVersionInfo(Entity):
    enums: ClassVar = {"status": ModelStatus, "kind": ModelKind, "selection_basis": SelectionBasis}

    id: int
    name: str
    kind: ModelKind
    config: dict[str, Any]
    artifact_path: str
    sha256: str
    status: ModelStatus
    parent_id: int | None
    parameter_count: int | None
    pinned: bool
    created_at: datetime
    selection_score: float | None = None
    selection_basis: SelectionBasis | None = None

    def files(self, parent: ModelVersionInfo | None = None) -> ModelVersionFiles:
        """What :func:`cxrmodel.models.loading.load_model_version` needs (with the parent
        network's files for an embedding baseline)."""
        return ModelVersionFiles.of(self, parent)


@dataclass(frozen=True)
class TrainingRunInfo(Entity):
    enums: ClassVar = {"status": RunStatus, "architecture": ModelKind}

    id: int
    model_version_id: int | None
    flow_run_id: str | None
    architecture: ModelKind
    config: dict[str, Any]
    device: str | None
    n_train: int | None
    n_val: int | None
    best_epoch: int | None
    best_metric: float | None
    status: RunStatus
    started_at: datetime
    finished_at: datetime | None
    heartbeat_at: datetime | None
    error: str | None
    output_dir: str | None
    resumed_from: str | None


@dataclass(frozen=True)
class ThresholdSetInfo(Entity):
    """A threshold set with its values (``finding -> threshold``) and notes."""

    enums: ClassVar = {"method": ThresholdMethod}

    id: int
    model_version_id: int
    method: ThresholdMethod
    params: dict[str, Any]
    split: str
    is_active: bool
    created_at: datetime
    values: dict[str, float]
    notes: dict[str, str]


@dataclass(frozen=True)
class EvaluationInfo(Entity):
    """One ``evaluations`` row: identity, every aggregate metric, and the paths of its files."""

    id: int
    model_version_id: int
    threshold_set_id: int | None
    split: str
    n_studies: int
    macro_auroc: float | None
    micro_auroc: float | None
    macro_f1: float
    micro_f1: float
    macro_precision: float
    micro_precision: float
    macro_recall: float
    micro_recall: float
    exact_match: float
    hamming_loss: float
    accuracy: float
    lrap: float | None
    mean_brier: float
    inference_ms_per_image: float | None
    macro_auroc_ci_low: float | None
    macro_auroc_ci_high: float | None
    macro_f1_ci_low: float | None
    macro_f1_ci_high: float | None
    n_bootstrap: int | None
    mean_ece: float | None
    calibration_method: str | None
    calibration: dict[str, Any] | None
    report_path: str | None
    bundle_path: str | None
    arrays_path: str | None
    created_at: datetime


@dataclass(frozen=True)
class ScoringRunInfo(Entity):
    enums: ClassVar = {"status": ScoringStatus, "trigger": ScoringTrigger}

    id: int
    model_version_id: int
    threshold_set_id: int
    flow_run_id: str | None
    status: ScoringStatus
    trigger: ScoringTrigger
    n_candidates: int
    n_scored: int
    n_skipped: int
    n_failed: int
    started_at: datetime
    heartbeat_at: datetime | None
    finished_at: datetime | None
    error: str | None
    host: str | None = None  # where the run's process ran (issue 22: a dead claim is reclaimable)
    pid: int | None = None
