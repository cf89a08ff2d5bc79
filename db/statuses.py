"""The closed vocabularies of the database: every status, action, split and method a row may
hold. Each is a ``StrEnum`` (its members compare equal to their strings) and each column that
holds one has a CHECK constraint built from it (:mod:`db.models`, migration 0006), so a
misspelled status is refused by the database itself, whoever writes the row. Model kinds and
threshold methods belong to the library (:mod:`cxrmodel.models.kinds`, :mod:`cxrmodel.config`)
and are re-exported here."""

from __future__ import annotations

from enum import StrEnum

from cxrmodel.config import ThresholdMethod
from cxrmodel.models.kinds import ModelKind

__all__ = [
    "ModelKind",
    "ModelStatus",
    "PacsInstanceStatus",
    "PacsObjectKind",
    "PacsObjectStatus",
    "PromotionAction",
    "RunStatus",
    "SelectionBasis",
    "ScoringStatus",
    "ScoringTrigger",
    "StudySplit",
    "StudyStatus",
    "ThresholdMethod",
]


class StudyStatus(StrEnum):
    ACTIVE = "active"
    QUARANTINED = "quarantined"  # its image does not decode: left out of training and reports
    FAILED = "failed"  # scoring failed max_attempts times: skipped until its file (content hash) changes


class StudySplit(StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"
    INCOMING = "incoming"  # unlabelled, waiting to be scored (NULL is allowed too)


class RunStatus(StrEnum):
    """A refresh or training run."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class ScoringStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    ABANDONED = "abandoned"  # its process died without saying so (no heartbeat)


class ScoringTrigger(StrEnum):
    """What started a scoring run (migration 0009)."""

    BATCH = "batch"  # the nightly run, ``cxr score``, the score-now deployment
    ON_DEMAND = "on_demand"  # one study posted to the HTTP service (``cxr api``)


class ModelStatus(StrEnum):
    CANDIDATE = "candidate"
    CHAMPION = "champion"
    RETIRED = "retired"


class SelectionBasis(StrEnum):
    """What a model version's ``selection_score`` was measured on (never the test split)."""

    VALIDATION = "validation"
    CROSS_VALIDATION = "cross_validation"  # patient-grouped folds over train + val: val too small to rank


class PromotionAction(StrEnum):
    PROMOTE = "promote"  # automatic, after an evaluation
    PIN = "pin"
    UNPIN = "unpin"
    ROLLBACK = "rollback"


class PacsInstanceStatus(StrEnum):
    """What the PACS pull made of one instance it saw (migration 0011)."""

    REGISTERED = "registered"  # retrieved, stored by content, registered as an unlabelled study
    SKIPPED = "skipped"  # not for the model (not a radiograph, lateral, no pixels, too large): reason says
    FAILED = "failed"  # retrieved but unusable (does not decode): reason says; never fetched again
    RETRY = "retry"  # the retrieval failed (PACS down): fetched again by the next pull


class PacsObjectStatus(StrEnum):
    """A DICOM object written back to the PACS (migration 0011)."""

    PENDING = "pending"  # not stored yet (the PACS was down, or refused it fewer than max tries)
    SENT = "sent"
    FAILED = "failed"  # refused max_attempts times: left alone


class PacsObjectKind(StrEnum):
    SR = "sr"  # the Comprehensive SR of one prediction
    HEATMAP = "heatmap"  # a secondary capture of the Grad-CAM overlay
