"""The service's JSON bodies (and the examples the OpenAPI schema shows)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cxrmodel.findings import FINDINGS

_PROBABILITIES = {f: round(0.02 + 0.06 * i, 2) for i, f in enumerate(FINDINGS)}
_THRESHOLDS = dict.fromkeys(FINDINGS, 0.35)


class Refused(BaseModel):
    """Every 4xx/5xx answer."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"error": "unauthorised", "reason": "invalid API key"}]})
    error: str = Field(description="A short code: unauthorised, too_large, unsupported_type, invalid_request, ...")
    reason: str = Field(description="What was wrong, in words.")


class ModelRef(BaseModel):
    id: int
    name: str = Field(examples=["densenet121_fpn-20250101-020000"])
    kind: str = Field(examples=["densenet121_fpn"])


class TopFinding(BaseModel):
    finding: str = Field(examples=["Effusion"])
    probability: float = Field(examples=[0.81])
    threshold: float = Field(examples=[0.35])
    decision: bool = Field(examples=[True])


class PatientFields(BaseModel):
    age: float | None = Field(examples=[62.0])
    sex: Literal["M", "F"] | None = Field(examples=["F"])
    view: Literal["PA", "AP"] | None = Field(examples=["PA"])
    source: dict[str, Literal["dicom", "form", "study", "unknown"]] = Field(
        description="Where each field came from: the DICOM header wins over the form.",
        examples=[{"age": "dicom", "sex": "dicom", "view": "form"}],
    )


class GradCam(BaseModel):
    finding: str = Field(examples=["Effusion"])
    png_base64: str = Field(description="The model input with the Grad-CAM heat map blended over it, a base64 PNG.")


class SimilarCase(BaseModel):
    study_key: str = Field(examples=["00000013_005.png"])
    cosine: float = Field(examples=[0.93])
    findings: list[str] = Field(examples=[["Effusion", "Mass"]])
    split: str | None = Field(examples=["train"])


class ScoreResponse(BaseModel):
    """One study scored by the champion at its active thresholds, stored as an on-demand run."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "study_key": "sha256-" + "ab" * 32,
                    "new_study": True,
                    "content_sha256": "ab" * 32,
                    "image_type": "png",
                    "model": {"id": 3, "name": "densenet121_fpn-20250101-020000", "kind": "densenet121_fpn"},
                    "threshold_set_id": 5,
                    "threshold_method": "dynamic_f1",
                    "scoring_run_id": 42,
                    "patient": {"age": 62.0, "sex": "F", "view": "PA", "source": {"age": "form", "sex": "form", "view": "form"}},
                    "probabilities": _PROBABILITIES,
                    "thresholds": _THRESHOLDS,
                    "decisions": {f: p >= 0.35 for f, p in _PROBABILITIES.items()},
                    "top_findings": [{"finding": "Hernia", "probability": 0.8, "threshold": 0.35, "decision": True}],
                    "gradcam": None,
                    "similar_cases": None,
                    "notes": [],
                    "batch_size": 3,
                    "timings_ms": {"decode": 4.1, "model": 38.0, "total": 61.5},
                }
            ]
        }
    )
    study_key: str
    new_study: bool = Field(description="False when a study with the same image content already existed.")
    content_sha256: str
    image_type: Literal["png", "jpeg", "dicom"]
    model: ModelRef
    threshold_set_id: int
    threshold_method: str
    scoring_run_id: int
    patient: PatientFields
    probabilities: dict[str, float]
    thresholds: dict[str, float]
    decisions: dict[str, bool]
    top_findings: list[TopFinding]
    gradcam: GradCam | None = None
    similar_cases: list[SimilarCase] | None = None
    notes: list[str] = Field(default_factory=list, description="Why an extra that was asked for is missing.")
    batch_size: int = Field(description="How many requests shared this request's forward pass (micro-batching).")
    timings_ms: dict[str, float]


class VersionPredictionsOut(BaseModel):
    model: ModelRef
    model_status: str
    threshold_set_id: int
    scoring_run_id: int | None
    trigger: str | None = Field(description="batch (a night, cxr score) or on_demand (this service).")
    scored_at: datetime
    probabilities: dict[str, float]
    decisions: dict[str, bool]


class StudyPredictionsResponse(BaseModel):
    study_key: str
    source: str
    labelled: bool
    age: float | None
    sex: str | None
    view: str | None
    predictions: list[VersionPredictionsOut] = Field(description="One entry per model version, newest version first.")


class TestMetrics(BaseModel):
    evaluation_id: int
    n_studies: int
    macro_auroc: float | None
    macro_auroc_ci: tuple[float | None, float | None]
    micro_auroc: float | None
    macro_f1: float
    micro_f1: float
    mean_brier: float
    created_at: datetime


class ModelOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    id: int
    name: str
    kind: str
    status: str
    pinned: bool
    parent_id: int | None
    created_at: datetime
    test_metrics: TestMetrics | None
    threshold_set_id: int | None
    thresholds: dict[str, float] | None = None


class ModelsResponse(BaseModel):
    models: list[ModelOut]


class Health(BaseModel):
    """``ok``; ``degraded`` (200: scoring with the loaded champion, but the registry's newer one
    was refused, see ``checks.champion_refused``); ``not_ready`` (503)."""

    status: Literal["ok", "degraded", "not_ready"]
    checks: dict[str, str] = Field(default_factory=dict, examples=[{"database": "ok", "champion": "densenet121_fpn-2025"}])
