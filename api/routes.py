"""``/v1``: score a study, a study's predictions, the registry. Every route needs an API key."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Path, Request, UploadFile

from api.champion import NoChampion
from api.errors import Refusal
from api.schemas import (
    ModelOut,
    ModelRef,
    ModelsResponse,
    Refused,
    ScoreResponse,
    StudyPredictionsResponse,
    TestMetrics,
    VersionPredictionsOut,
)
from api.scoring import MAX_SIMILAR, ScoreOptions, score_upload
from api.security import STUDY_KEY_PATTERN, require_api_key, valid_study_key
from cxrmodel.findings import FINDINGS
from db.engine import session_scope
from db.on_demand import RegisteredModel, champion_with_thresholds, registered_models, study_by_key, study_predictions

REFUSALS = {
    401: {"model": Refused, "description": "No or an invalid X-API-Key."},
    413: {"model": Refused, "description": "Body over the upload limit, or an image over the pixel limit."},
    415: {"model": Refused, "description": "Not a PNG, JPEG or DICOM (by content)."},
    422: {"model": Refused, "description": "Invalid fields, an undecodable image, or no age, sex or view at all."},
    503: {
        "model": Refused,
        "description": "No champion to score with, the database unavailable, or the decode budget full "
        "(the last two with Retry-After).",
    },
}

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses={401: REFUSALS[401]})


@router.post("/score", response_model=ScoreResponse, responses=REFUSALS, summary="Score one study now")
async def score(
    request: Request,
    image: Annotated[UploadFile, File(description="A PNG, JPEG or DICOM radiograph (the type is read from the content).")],
    age: Annotated[float | None, Form(ge=0, le=120, description="Years; a DICOM file's PatientAge wins.", examples=[62])] = None,
    sex: Annotated[Literal["M", "F"] | None, Form(description="A DICOM file's PatientSex wins.", examples=["F"])] = None,
    view: Annotated[Literal["PA", "AP"] | None, Form(description="A DICOM file's ViewPosition wins.", examples=["PA"])] = None,
    gradcam: Annotated[bool, Form(description="Add a Grad-CAM overlay (base64 PNG) of the top finding.")] = False,
    gradcam_finding: Annotated[
        Literal[tuple(FINDINGS)] | None, Form(description="Explain this finding instead of the top one.")
    ] = None,
    similar: Annotated[int, Form(ge=0, le=MAX_SIMILAR, description="How many similar labelled cases to add (0: none).")] = 0,
) -> ScoreResponse:
    """Score the uploaded image with the champion at its active thresholds, and store it like any
    prediction: the study (the same image sent twice is one study, found by its sha256), an
    ``on_demand`` scoring run and 14 prediction rows. Age, sex and view are optional, but one
    of them must be known (from the form or the DICOM header)."""
    state = request.app.state
    try:
        champion = await state.champions.current()
    except NoChampion as exc:
        raise Refusal(503, "no_champion", str(exc)) from exc
    options = ScoreOptions(age, sex, view, gradcam, gradcam_finding, similar)
    return await score_upload(
        image.file,
        options,
        champion=champion,
        batcher=state.batcher,
        database_url=state.database_url,
        uploads_dir=state.uploads_dir,
        max_pixels=state.settings.api_max_pixels,
        decode_budget=state.decode_budget,
    )


@router.get(
    "/studies/{study_key}/predictions",
    response_model=StudyPredictionsResponse,
    responses={404: {"model": Refused}, 422: {"model": Refused}},
    summary="A study's predictions across model versions",
)
async def predictions(
    request: Request,
    study_key: Annotated[str, Path(description=f"The study key ({STUDY_KEY_PATTERN}).", examples=["00000001_000.png"])],
) -> StudyPredictionsResponse:
    key = valid_study_key(study_key)

    def read():
        with session_scope(request.app.state.database_url) as session:
            study = study_by_key(session, key)
            return study, (study_predictions(session, study.id) if study else [])

    study, rows = await asyncio.to_thread(read)
    if study is None:
        raise Refusal(404, "not_found", f"no study with key {key!r}")
    return StudyPredictionsResponse(
        study_key=study.study_key,
        source=study.source,
        labelled=study.labelled,
        age=study.age,
        sex=study.sex,
        view=study.view,
        predictions=[
            VersionPredictionsOut(
                model=ModelRef(id=r.model_version_id, name=r.model_name, kind=r.model_kind),
                model_status=r.model_status,
                threshold_set_id=r.threshold_set_id,
                scoring_run_id=r.scoring_run_id,
                trigger=r.trigger,
                scored_at=r.scored_at,
                probabilities=r.probabilities,
                decisions=r.decisions,
            )
            for r in rows
        ],
    )


def _model_out(entry: RegisteredModel, with_thresholds: bool) -> ModelOut:
    v, ev = entry.version, entry.test
    metrics = None
    if ev is not None:
        metrics = TestMetrics(
            evaluation_id=ev.id,
            n_studies=ev.n_studies,
            macro_auroc=ev.macro_auroc,
            macro_auroc_ci=(ev.macro_auroc_ci_low, ev.macro_auroc_ci_high),
            micro_auroc=ev.micro_auroc,
            macro_f1=ev.macro_f1,
            micro_f1=ev.micro_f1,
            mean_brier=ev.mean_brier,
            created_at=ev.created_at,
        )
    return ModelOut(
        id=v.id,
        name=v.name,
        kind=str(v.kind),
        status=str(v.status),
        pinned=v.pinned,
        parent_id=v.parent_id,
        created_at=v.created_at,
        test_metrics=metrics,
        threshold_set_id=entry.threshold_set_id,
        thresholds=entry.thresholds if with_thresholds else None,
    )


@router.get("/models", response_model=ModelsResponse, summary="The registry with test metrics")
async def models(request: Request) -> ModelsResponse:
    def read():
        with session_scope(request.app.state.database_url) as session:
            return registered_models(session)

    return ModelsResponse(models=[_model_out(m, False) for m in await asyncio.to_thread(read)])


@router.get("/models/champion", response_model=ModelOut, responses={404: {"model": Refused}}, summary="The champion")
async def champion(request: Request) -> ModelOut:
    """The champion with its newest test metrics and its active thresholds (what scoring uses)."""

    def read():
        with session_scope(request.app.state.database_url) as session:
            return champion_with_thresholds(session)

    entry = await asyncio.to_thread(read)
    if entry is None:
        raise Refusal(404, "no_champion", "there is no champion model version yet")
    return _model_out(entry, True)
