"""Scoring one uploaded study: stage and check the file, decode it, take the patient fields
(DICOM tags win over the form, as in nightly scoring), predict through the micro-batcher,
optionally explain (Grad-CAM) and retrieve similar labelled cases, then store the study, an
``on_demand`` scoring run and its predictions in one transaction.

Everything that can refuse the request runs before anything is kept: a refusal leaves neither a
file nor a row behind.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from api.batcher import MicroBatcher
from api.champion import Champion
from api.decoding import DecodeBudget, decode_bytes
from api.errors import Refusal
from api.schemas import GradCam, ModelRef, PatientFields, ScoreResponse, SimilarCase, TopFinding
from api.uploads import ImageKind, StagedUpload, stage_upload
from cxrmodel.data.imaging import ImageDecodeError, read_dicom_metadata, read_grayscale
from cxrmodel.evaluation.metrics import apply_thresholds
from cxrmodel.explain.explanations import gradcam_unavailable, similar_cases_unavailable, study_gradcam
from cxrmodel.findings import FINDINGS
from cxrmodel.serving import patient_vector, ranked_findings
from db.engine import session_scope
from db.on_demand import record_on_demand_scoring, study_by_content, study_for_upload
from db.studies import active_labelled_findings
from reports.figures.images import gradcam_overlay

TOP_FINDINGS = 3
MAX_SIMILAR = 20


@dataclass(frozen=True)
class ScoreOptions:
    age: float | None = None
    sex: str | None = None
    view: str | None = None
    gradcam: bool = False
    gradcam_finding: str | None = None
    similar: int = 0


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray
    patient: PatientFields


def _decode(staged: StagedUpload, options: ScoreOptions) -> Decoded:
    try:
        pixels = read_grayscale(staged.temp_path)
        tags = read_dicom_metadata(staged.temp_path) if staged.kind is ImageKind.DICOM else {}
    except ImageDecodeError as exc:
        raise Refusal(422, "undecodable", f"the image could not be decoded: {exc.reason}") from exc
    values, source = {}, {}
    for name in ("age", "sex", "view"):
        tag, given = tags.get(name), getattr(options, name)
        values[name] = tag if tag is not None else given
        source[name] = "dicom" if tag is not None else "form" if given is not None else "unknown"
    if all(v is None for v in values.values()):
        raise Refusal(
            422, "missing_metadata", "missing metadata: give at least one of age, sex and view (or a DICOM file that has them)"
        )
    if values["age"] is not None and not 0 <= values["age"] <= 120:
        raise Refusal(422, "invalid_metadata", f"age {values['age']:g} is outside 0-120 years")
    return Decoded(pixels, PatientFields(**values, source=source))


def _gradcam(champion: Champion, image: torch.Tensor, patient: torch.Tensor, finding: str) -> GradCam:
    grey, heat = study_gradcam(champion.model, image, patient, finding)
    uri = gradcam_overlay(grey, heat)
    return GradCam(finding=finding, png_base64=uri.split(",", 1)[1])


def _similar(database_url: str, champion: Champion, embedding: np.ndarray, k: int, sha256: str) -> list[SimilarCase]:
    """The ``k`` labelled, active studies nearest to ``embedding`` (the uploaded study itself
    left out when it is one of them)."""
    with session_scope(database_url) as session:
        own = study_by_content(session, sha256)
    index = champion.index
    want = min(len(index), 2 * k + 10)  # a few extra: entries of studies quarantined since the index was built
    while True:
        hits = index.query(embedding[None], want, exclude_keys=own.study_key if own else None)[0]
        with session_scope(database_url) as session:
            info = active_labelled_findings(session, [key for key, _ in hits])
        kept = [(key, cos) for key, cos in hits if key in info][:k]
        if len(kept) >= k or want >= len(index):
            return [SimilarCase(study_key=key, cosine=cos, findings=info[key][0], split=info[key][1]) for key, cos in kept]
        want = len(index)


def _store(
    database_url: str, uploads_dir: Path, staged: StagedUpload, champion: Champion, patient: PatientFields, probs: np.ndarray
):
    """Keep the file (unless a study already has this content) and write study, run and
    predictions in one transaction; a failed write removes the file it kept."""
    decisions = apply_thresholds(probs[None].astype(np.float64), champion.thresholds)[0]
    created_file = None
    try:
        with session_scope(database_url) as session:
            existing = study_by_content(session, staged.sha256)
            if existing is None:
                path, created = staged.keep(uploads_dir)
                created_file = path if created else None
            else:
                staged.discard()
                path = Path(existing.image_path)
            study = study_for_upload(session, staged.sha256, str(path), patient.age, patient.sex, patient.view)
            run = record_on_demand_scoring(session, study.id, champion.version_id, champion.threshold_set_id, probs, decisions)
    except BaseException:
        staged.discard()
        if created_file is not None:
            created_file.unlink(missing_ok=True)
        raise
    return study, run, existing is None


async def score_upload(
    source: BinaryIO,
    options: ScoreOptions,
    *,
    champion: Champion,
    batcher: MicroBatcher,
    database_url: str,
    uploads_dir: Path,
    max_pixels: int,
    decode_budget: DecodeBudget | None = None,
) -> ScoreResponse:
    started = time.perf_counter()
    staged = await asyncio.to_thread(stage_upload, source, uploads_dir, max_pixels)
    try:
        if decode_budget is None:
            decoded = await asyncio.to_thread(_decode, staged, options)
        else:
            needed = await asyncio.to_thread(decode_bytes, staged.temp_path, staged.kind is ImageKind.DICOM)
            with decode_budget.reserve(needed):
                decoded = await asyncio.to_thread(_decode, staged, options)
        decoded_at = time.perf_counter()
        model = champion.model
        patient = patient_vector(model, decoded.patient.age, decoded.patient.sex, decoded.patient.view)
        prediction = await batcher.predict(champion, decoded.pixels, patient)
        image = prediction.image
        predicted_at = time.perf_counter()
        ranked = ranked_findings(prediction.probabilities, champion.thresholds)
        notes: list[str] = []
        gradcam = None
        if options.gradcam and (reason := gradcam_unavailable(champion.kind)) is not None:
            notes.append(reason)
        elif options.gradcam:
            finding = options.gradcam_finding or ranked[0].finding
            gradcam = await batcher.run_exclusive(_gradcam, champion, image, patient, finding)
        similar = None
        if options.similar:
            if (reason := similar_cases_unavailable(champion.kind)) is not None:
                notes.append(reason)
            elif champion.index is None:
                notes.append(f"similar cases unavailable: {champion.index_reason}")
            else:
                similar = await asyncio.to_thread(
                    _similar, database_url, champion, prediction.embedding, options.similar, staged.sha256
                )
    except BaseException:
        staged.discard()
        raise
    study, run, new_study = await asyncio.to_thread(
        _store, database_url, uploads_dir, staged, champion, decoded.patient, prediction.probabilities
    )
    by_finding = {r.finding: r for r in ranked}
    return ScoreResponse(
        study_key=study.study_key,
        new_study=new_study,
        content_sha256=staged.sha256,
        image_type=staged.kind.value,
        model=ModelRef(id=champion.version_id, name=champion.name, kind=champion.kind),
        threshold_set_id=champion.threshold_set_id,
        threshold_method=champion.threshold_method,
        scoring_run_id=run.id,
        patient=decoded.patient,
        probabilities={f: by_finding[f].probability for f in FINDINGS},
        thresholds={f: by_finding[f].threshold for f in FINDINGS},
        decisions={f: by_finding[f].decision for f in FINDINGS},
        top_findings=[TopFinding(**vars(r)) for r in ranked[:TOP_FINDINGS]],
        gradcam=gradcam,
        similar_cases=similar,
        notes=notes,
        batch_size=prediction.batch_size,
        timings_ms={
            "decode": round(1000 * (decoded_at - started), 2),
            "model": round(1000 * (predicted_at - decoded_at), 2),
            "total": round(1000 * (time.perf_counter() - started), 2),
        },
    )
