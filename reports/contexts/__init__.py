"""The typed contracts of the three reports: what a caller must hand over to render each one.

Each context is a frozen pydantic model. A missing or misspelt field, a wrong type, an example
image that is not an embedded ``data:image/...`` URI or arrays of the wrong shape fail when the
context is built (:class:`pydantic.ValidationError`, a ``ValueError``), never half-way through
rendering. Fields with a default may be left out; ``X | None`` fields without one must be given.
Rows read from storage (per-class, subgroup, comparison, epoch metrics) ignore columns the
report does not show; everything else forbids unknown fields.
"""

from reports.contexts.base import QUARANTINE_DETAIL_LIMIT
from reports.contexts.evaluation import (
    ClassMetrics,
    ComparisonRow,
    DataInfo,
    EmbeddingMap,
    EpochMetrics,
    EvaluationContext,
    Example,
    ModelInfo,
    SubgroupMetrics,
    ThresholdInfo,
    TopFinding,
)
from reports.contexts.runs import (
    Balancing,
    DatasetContext,
    DatasetRefresh,
    FailedStudy,
    FindingFlags,
    LastRefresh,
    QuarantineEntry,
    RetrievalNote,
    RunInfo,
    ScoringContext,
    SimilarStudy,
    SplitCount,
    TopStudy,
)

__all__ = [
    "QUARANTINE_DETAIL_LIMIT",
    "Balancing",
    "ClassMetrics",
    "ComparisonRow",
    "DataInfo",
    "DatasetContext",
    "DatasetRefresh",
    "EmbeddingMap",
    "EpochMetrics",
    "EvaluationContext",
    "Example",
    "FailedStudy",
    "FindingFlags",
    "LastRefresh",
    "ModelInfo",
    "QuarantineEntry",
    "RetrievalNote",
    "RunInfo",
    "ScoringContext",
    "SimilarStudy",
    "SplitCount",
    "SubgroupMetrics",
    "ThresholdInfo",
    "TopFinding",
    "TopStudy",
]
