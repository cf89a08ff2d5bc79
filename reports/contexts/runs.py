"""The contracts of the scoring report (one scoring run) and the dataset report (one refresh)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from pydantic import Field, model_validator

from cxrmodel.findings import FINDINGS
from reports.contexts.base import QUARANTINE_DETAIL_LIMIT, Ages, Array, Contract, Id


class RunInfo(Contract):
    id: Id
    model_name: str | None = None
    threshold_set_id: Id | None = None
    started_at: str | None = None
    finished_at: str | None = None
    n_scored: int | None = None
    n_skipped: int | None = None
    n_failed: int | None = None
    status: str | None = None


class LastRefresh(Contract):
    """The latest refresh run before the scoring run; a failed one is a warning at the top."""

    id: Id | None = None
    status: str | None = None
    error: str | None = None
    started_at: str | None = None


class FailedStudy(Contract):
    study_key: str
    reason: str | None = None


class FindingFlags(Contract):
    """Studies flagged for one finding; rates are fractions. The drift rule
    (:func:`cxrmodel.evaluation.drift.drift_status`) compares ``flag_rate`` with
    ``training_prevalence``."""

    finding: str
    n_flagged: int | None = None
    flag_rate: float | None = None
    training_prevalence: float | None = None


class SimilarStudy(NamedTuple):
    study_key: str
    cosine: float
    findings: str | None = None


class TopStudy(NamedTuple):
    """A top study, from ``(study_key, probability)`` or with its most similar labelled studies,
    ``(study_key, probability, [(similar_key, cosine, findings), ...])``."""

    study_key: str
    probability: float
    similar: tuple[SimilarStudy, ...] | None = None


class RetrievalNote(Contract):
    """How much the similar cases mean: the index's leave-one-out precision@k beside random
    retrieval and the prevalence list (:mod:`cxrmodel.explain.retrieval`)."""

    k: int
    precision: float
    random: float
    prevalence: float
    n: int


class ScoringContext(Contract):
    """Everything the nightly scoring report shows; ``top_studies`` maps a finding to its
    studies, highest probability first."""

    title: str
    generated_at: str
    run: RunInfo
    refresh: LastRefresh | None = None
    failures: tuple[FailedStudy, ...]
    flags: tuple[FindingFlags, ...]
    top_studies: dict[str, tuple[TopStudy, ...]]
    retrieval: RetrievalNote | None = None


class DatasetRefresh(Contract):
    """The counts of the refresh run the dataset report describes."""

    id: Id | None = None
    n_rows: int | None = None
    n_added: int | None = None
    n_updated: int | None = None
    n_unchanged: int | None = None
    n_quarantined: int | None = None
    status: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    source: str | None = None
    location: str | None = None


class SplitCount(Contract):
    """Studies and patients of one split (a bare number is read as ``n_studies``)."""

    n_studies: int | None = None
    n_patients: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_count(cls, value: Any) -> Any:
        return {"n_studies": value} if value is None or isinstance(value, int | np.integer) else value


class Balancing(Contract):
    """Training-split label counts before and after a preset (:func:`cxrmodel.data.balancing.apply_balancing`)."""

    preset: str | None = None
    counts_before: dict[str, int | None] = {}
    counts_after: dict[str, int | None] = {}
    seed: int | None = None
    n_rows_before: int | None = None
    n_rows_after: int | None = None


class QuarantineEntry(Contract):
    row_key: str | None = None
    row_number: int | None = None
    reason: str | None = None
    source: str | None = None
    refresh_run_id: int | None = None
    created_at: str | None = None


class DatasetContext(Contract):
    """Everything the dataset report shows. ``label_counts_by_split``: split -> {finding or "No
    Finding": studies}; ``labels``: ``[N, C]`` 0/1 for the co-occurrence heatmap (None or empty
    skips it); ``ages_by_split``: split -> ages (NaN unknown); ``sex_by_split``/``view_by_split``:
    split -> {category: fraction}; ``quarantined`` in listing order, at most ``quarantine_limit``
    in detail; ``n_patients`` defaults to the per-split sum."""

    title: str
    generated_at: str
    source: str | None
    refresh: DatasetRefresh | None
    split_counts: dict[str, SplitCount]
    label_counts_by_split: dict[str, dict[str, int | None]]
    balancing: Balancing | None
    labels: Array | None
    ages_by_split: dict[str, Ages]
    sex_by_split: dict[str, dict[str, float | None]]
    view_by_split: dict[str, dict[str, float | None]]
    quarantined: tuple[QuarantineEntry, ...]
    quarantine_limit: int = Field(QUARANTINE_DETAIL_LIMIT, ge=0)
    n_patients: int | None = None
    findings: tuple[str, ...] = FINDINGS

    @model_validator(mode="after")
    def _labels_shape(self) -> DatasetContext:
        labels = self.labels
        if labels is not None and labels.size and (labels.ndim != 2 or labels.shape[1] != len(self.findings)):
            raise ValueError(f"labels must be [N, {len(self.findings)}]; got shape {labels.shape}")
        return self
