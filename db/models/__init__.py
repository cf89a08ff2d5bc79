"""SQLAlchemy 2 typed declarative models.

Long tables (one row per finding) hold labels, thresholds, per-class metrics and
predictions, so SQL reads naturally: ``WHERE finding = 'Effusion' AND probability > 0.8``.
Unique constraints make every write an idempotent upsert. Every status, kind, action, split
and method column has a CHECK constraint listing the members of its enum (:mod:`db.checks`).
"""

from db.models.base import NAMING_CONVENTION, Base, utcnow
from db.models.core import (
    ClassMetric,
    EpochMetric,
    Evaluation,
    ModelVersion,
    Promotion,
    QuarantinedRow,
    RefreshRun,
    Study,
    StudyLabel,
    SubgroupMetric,
    Threshold,
    ThresholdSet,
    TrainingRun,
)
from db.models.pacs import PacsCursor, PacsInstance, PacsObject
from db.models.scoring import Prediction, ScoringClaim, ScoringFailure, ScoringRun, SupersededPrediction

__all__ = [
    "NAMING_CONVENTION",
    "Base",
    "utcnow",
    "Study",
    "StudyLabel",
    "RefreshRun",
    "QuarantinedRow",
    "ModelVersion",
    "TrainingRun",
    "EpochMetric",
    "ThresholdSet",
    "Threshold",
    "Evaluation",
    "ClassMetric",
    "SubgroupMetric",
    "Promotion",
    "ScoringRun",
    "ScoringClaim",
    "Prediction",
    "SupersededPrediction",
    "ScoringFailure",
    "PacsCursor",
    "PacsInstance",
    "PacsObject",
]
