"""The evaluation report's contract."""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import AliasChoices, Field, model_validator

from cxrmodel.findings import FINDINGS
from reports.contexts.base import Array, Contract, DataImageUri, Id, StoredRow


class ModelInfo(Contract):
    name: str  # the other fields show "—" when None
    kind: str | None = None
    id: Id | None = None
    sha256: str | None = None
    parameter_count: int | None = None
    created_at: str | None = None


class DataInfo(Contract):
    """``source`` containing ``"synth"`` adds a synthetic-data warning to the Limitations section."""

    source: str | None = None
    split: str | None = None
    n_studies: int | None = None
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None


class ThresholdInfo(Contract):
    """The decision thresholds: ``values`` finding -> threshold, ``notes`` finding -> why (empty
    notes are not shown)."""

    method: str | None = None
    values: dict[str, float] = {}
    notes: dict[str, str | None] = {}


class ClassMetrics(StoredRow):
    """One finding's metrics; a missing value shows as "—". A None ``threshold`` falls back to
    the context's ``thresholds.values``."""

    finding: str
    n_positive: int | None = None
    auroc: float | None = None
    auroc_ci_low: float | None = None
    auroc_ci_high: float | None = None
    pr_auc: float | None = None
    f1: float | None = None
    f1_ci_low: float | None = None
    f1_ci_high: float | None = None
    precision: float | None = None
    recall: float | None = None
    specificity: float | None = None
    npv: float | None = None
    brier: float | None = None
    ece: float | None = None
    brier_calibrated: float | None = None
    ece_calibrated: float | None = None
    threshold: float | None = None
    tp: int
    fp: int
    tn: int
    fn: int


class SubgroupMetrics(StoredRow):
    """Aggregate metrics on one group of one attribute (``group``, or ``group_name`` as stored)."""

    attribute: str
    group: str = Field(validation_alias=AliasChoices("group", "group_name"))
    n_studies: int | None = None
    n_positive_labels: int | None = None
    macro_auroc: float | None = None
    macro_f1: float | None = None
    micro_f1: float | None = None
    exact_match: float | None = None
    hamming_loss: float | None = None
    mean_brier: float | None = None
    mean_ece: float | None = None


class ComparisonRow(StoredRow):
    """One model version with its latest evaluation on the same split; ``is_current`` marks the
    model of the report. ``selection_score``: the figure the registry ranked it by, measured on
    ``selection_basis`` ('validation' or 'cross_validation', never the test split)."""

    name: str
    kind: str | None = None
    status: str | None = None
    is_current: bool = False
    selection_score: float | None = None
    selection_basis: str | None = None
    macro_auroc: float | None = None
    macro_auroc_ci_low: float | None = None
    macro_auroc_ci_high: float | None = None
    macro_f1: float | None = None
    micro_f1: float | None = None
    exact_match: float | None = None
    hamming_loss: float | None = None
    lrap: float | None = None
    mean_brier: float | None = None
    parameter_count: int | None = None
    inference_ms_per_image: float | None = None


class EpochMetrics(StoredRow):
    """One training epoch; a None value is left out of the training curves."""

    epoch: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    macro_f1: float | None = None
    mean_auroc: float | None = None


class TopFinding(NamedTuple):
    """``decision`` is a bool or a word such as ``"positive"``."""

    finding: str
    probability: float
    decision: bool | str


class Example(Contract):
    """A sample study: its image and top findings, optionally a Grad-CAM overlay for
    ``gradcam_finding`` or a ``gradcam_note`` saying why there is none."""

    study_key: str
    image_data_uri: DataImageUri
    top_findings: tuple[TopFinding, ...] = ()
    heatmap_data_uri: DataImageUri | None = None
    gradcam_finding: str | None = None
    gradcam_note: str | None = None
    caption: str | None = None


class EmbeddingMap(Contract):
    """A 2-D map ``xy [M, 2]`` of studies, labelled by ``labels [M, C]`` or by ``rows [M]``, the
    rows of the context's ``y_true`` that the points are (``labels`` wins when both are given)."""

    xy: Array
    rows: Array | None = None
    labels: Array | None = None

    @model_validator(mode="after")
    def _shapes(self) -> EmbeddingMap:
        if self.xy.ndim != 2 or self.xy.shape[1] != 2:
            raise ValueError(f"xy must be [M, 2]; got shape {self.xy.shape}")
        if self.rows is None and self.labels is None:
            raise ValueError("an embedding map needs rows (into y_true) or labels")
        for name, value in (("rows", self.rows), ("labels", self.labels)):
            if value is not None and len(value) != len(self.xy):
                raise ValueError(f"{len(self.xy)} points but {len(value)} {name}")
        return self


class EvaluationContext(Contract):
    """Everything the evaluation report shows. ``aggregates``: the overall metrics (``macro_auroc,
    ..., mean_brier, mean_ece``; unknown ones are listed too), their intervals ``<metric>_ci_low``
    / ``<metric>_ci_high``, ``n_bootstrap``, ``calibration_method``. ``y_true``/``y_prob``: ``[N, C]``
    labels and probabilities (columns in ``findings`` order) for the ROC, PR and reliability
    figures, both None to skip them. Sections whose data is missing say "not available"."""

    title: str
    generated_at: str
    model: ModelInfo
    data: DataInfo
    thresholds: ThresholdInfo
    aggregates: dict[str, Any]
    per_class: tuple[ClassMetrics, ...]
    comparison: tuple[ComparisonRow, ...]
    epochs: tuple[EpochMetrics, ...]
    y_true: Array | None
    y_prob: Array | None
    y_prob_calibrated: Array | None = None
    calibration_method: str | None = None  # default: aggregates["calibration_method"]
    examples: tuple[Example, ...] = ()
    subgroups: tuple[SubgroupMetrics, ...] = ()
    embedding_map: EmbeddingMap | None = None
    label_counts: dict[str, int | None] | None = None  # finding -> count, drawn as a bar chart
    label_counts_title: str | None = None
    limitations: str | None = None  # an extra paragraph for the Limitations section
    findings: tuple[str, ...] = FINDINGS
    evaluation_id: int | None = None

    @model_validator(mode="after")
    def _arrays_agree(self) -> EvaluationContext:
        if (self.y_true is None) != (self.y_prob is None):
            raise ValueError("y_true and y_prob go together: give both or neither")
        shape = None if self.y_true is None else self.y_true.shape
        if shape is not None and (len(shape) != 2 or shape[1] != len(self.findings) or self.y_prob.shape != shape):
            raise ValueError(f"y_true and y_prob must both be [N, {len(self.findings)}]; got {shape} and {self.y_prob.shape}")
        if self.y_prob_calibrated is not None and self.y_prob_calibrated.shape != shape:
            raise ValueError(f"y_prob_calibrated must have y_prob's shape {shape}; got {self.y_prob_calibrated.shape}")
        emap = self.embedding_map
        if emap is not None and emap.labels is None:
            if shape is None:
                raise ValueError("embedding_map.rows index y_true, which is missing")
            if len(emap.rows) and not (0 <= emap.rows.min() and emap.rows.max() < shape[0]):
                raise ValueError(f"embedding_map.rows must index the {shape[0]} rows of y_true")
        return self
