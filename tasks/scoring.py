"""Nightly scoring: every unlabelled study without a prediction from the champion."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact

from cxrmodel.findings import FINDINGS
from cxrmodel.inference import ScoringDataset, ScoringItem, score_batches
from cxrmodel.metadata import patient_features
from cxrmodel.train import resolve_device
from cxrmodel.transforms import eval_transform
from db import repository as repo
from db.engine import session_scope
from db.models import ModelVersion, ScoringRun
from tasks.common import flow_run_id, run_logger
from tasks.models import load_model_version


def _in_prefect_run() -> bool:
    """True inside a Prefect flow or task run (not when ``score_new_studies.fn`` is called directly)."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def _patient_rows(studies, scaler) -> list[tuple[float, float, float] | None]:
    """Patient features of each study, encoded by :func:`cxrmodel.metadata.patient_features`;
    None where age, sex and view are all unknown (scored as a failure: missing metadata)."""
    frame = pd.DataFrame({"age": [s.age for s in studies], "sex": [s.sex for s in studies], "view": [s.view for s in studies]})
    features = patient_features(frame, scaler)
    return [
        None if s.age is None and s.sex is None and s.view is None else tuple(float(v) for v in row)
        for s, row in zip(studies, features)
    ]


@task(name="score-new-studies", retries=2, retry_delay_seconds=10)
def score_new_studies(
    database_url: str, batch_size: int = 64, device: str = "auto", limit: int | None = None, num_workers: int = 0
) -> int:
    """Score pending studies with the champion and its active thresholds, committing batch by
    batch; failures are recorded with their reason. Returns the scoring run id."""
    logger = run_logger()
    with session_scope(database_url) as session:
        champion = repo.champion(session)
        if champion is None:
            raise RuntimeError("no champion model version: train, evaluate and promote one first")
        tset = repo.active_threshold_set(session, champion.id)
        if tset is None:
            raise RuntimeError(f"champion {champion.name} has no active threshold set")
        parent = session.get(ModelVersion, champion.parent_id) if champion.parent_id else None
        loaded = load_model_version(champion, parent)
        thresholds = np.array([{t.finding: t.threshold for t in tset.thresholds}[f] for f in FINDINGS])
        pending = repo.studies_to_score(session, champion.id, limit=limit)
        items = [ScoringItem(s.id, s.image_path, p) for s, p in zip(pending, _patient_rows(pending, loaded.age_scaler))]
        run = repo.start_scoring_run(
            session, model_version_id=champion.id, threshold_set_id=tset.id, flow_run_id=flow_run_id(), n_candidates=len(items)
        )
        run_id, tset_id, champion_id, champion_name = run.id, tset.id, champion.id, champion.name
    if loaded.knn is not None:
        raise NotImplementedError("scoring with an embedding baseline as champion is not supported yet")

    started = time.perf_counter()
    dataset = ScoringDataset(items, loaded.image_size, eval_transform(loaded.image_size))
    scored = failed = 0
    for batch in score_batches(loaded.network, dataset, batch_size, resolve_device(device), num_workers=num_workers):
        rows = [
            {"study_id": sid, "model_version_id": champion_id, "finding": finding, "probability": float(p),
             "decision": bool(p >= thresholds[j]), "threshold_set_id": tset_id, "scoring_run_id": run_id}
            for sid, probs in zip(batch.study_ids, batch.probabilities)
            for j, (finding, p) in enumerate(zip(FINDINGS, probs))
        ]
        with session_scope(database_url) as session:
            repo.write_predictions(session, rows)
            repo.record_scoring_failures(session, run_id, batch.failures)
            run = session.get(ScoringRun, run_id)
            run.n_scored += len(batch.study_ids)
            run.n_failed += len(batch.failures)
        scored += len(batch.study_ids)
        failed += len(batch.failures)
        for sid, reason in batch.failures.items():
            logger.warning("study %d failed: %s", sid, reason)
    seconds = time.perf_counter() - started
    with session_scope(database_url) as session:
        run = session.get(ScoringRun, run_id)
        run.status, run.finished_at = "completed", repo.now()
    logger.info("scoring run %d with %s: %d scored, %d failed in %.1fs", run_id, champion_name, scored, failed, seconds)
    if _in_prefect_run():  # outside a run Prefect would start a throw-away server (deprecated)
        create_markdown_artifact(
            key="cxr-nightly-scoring",
            markdown=f"## Scoring run {run_id}\n\nModel **{champion_name}**, threshold set {tset_id}.\n\n"
            f"| candidates | scored | failed | seconds |\n|---|---|---|---|\n| {len(items)} | {scored} | {failed} | {seconds:.1f} |",
            description=f"Nightly scoring run {run_id}",
        )
    return run_id
