"""Choosing the champion: rank candidates on the validation split, or by patient-grouped
cross-validation over train + val when the validation split is too small to rank; never on
the test split. Then promote the best candidate if it beats the champion on the same basis.

The work is :mod:`cxrmodel` (predictions, metrics, :func:`cxrmodel.training.candidates.cross_validate_candidates`);
the rule and the rows are :mod:`db.registry` (:func:`db.registry.record_selection`,
:func:`db.registry.promote_selected`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task

from cxrmodel.config import ClassicalConfig, DataConfig, EvaluationConfig, TrainConfig
from cxrmodel.evaluation.evaluate import predict_split_reusing
from cxrmodel.evaluation.metrics import evaluate_multilabel
from cxrmodel.evaluation.thresholds import DEFAULT_THRESHOLD
from cxrmodel.findings import FINDINGS
from cxrmodel.layout import HomeLayout
from cxrmodel.models.kinds import CLASSICAL_KINDS, EMBEDDING_KINDS, ModelKind
from cxrmodel.models.loading import load_model_version
from cxrmodel.models.version_files import ModelVersionFiles
from cxrmodel.training.candidates import CandidateRecipe, cross_validate_candidates
from db import registry, report_queries, thresholds
from db.engine import session_scope
from db.registry import PromotionDecision
from db.statuses import SelectionBasis
from tasks.common import labelled_frame, run_logger
from tasks.evaluation import VALIDATION_FILE


@task(name="selection-basis")
def selection_basis(database_url: str, config: EvaluationConfig) -> SelectionBasis:
    """``validation`` when the validation split holds at least ``config.min_validation_studies``
    active labelled studies, else ``cross_validation``."""
    with session_scope(database_url) as session:
        n_val = report_queries.labelled_studies_per_split(session)["val"]
    basis = SelectionBasis.VALIDATION if n_val >= config.min_validation_studies else SelectionBasis.CROSS_VALIDATION
    run_logger().info(
        "selection on %s: %d validation studies (cross-validation under %d)", basis, n_val, config.min_validation_studies
    )
    return basis


def _files(database_url: str, version_id: int) -> ModelVersionFiles:
    with session_scope(database_url) as session:
        return registry.model_version_files(session, version_id)


@task(name="validation-scores")
def validation_scores(database_url: str, home: Path, version_ids: Sequence[int], metric: str) -> dict[int, float | None]:
    """``metric`` (macro AUROC, or an F1 at the version's active thresholds) of each version on
    the validation split, as :func:`cxrmodel.evaluation.metrics.evaluate_multilabel` computes it."""
    frame, cache = labelled_frame(database_url), HomeLayout(Path(home)).cache
    scores: dict[int, float | None] = {}
    for version_id in version_ids:
        with session_scope(database_url) as session:
            tset = thresholds.active_threshold_set(session, version_id)
        if tset is None and metric != "macro_auroc":  # AUROC needs no thresholds; the F1s do
            raise RuntimeError(f"model version {version_id} has no threshold set: calibrate it before selection on {metric}")
        files = _files(database_url, version_id)
        store = Path(files.artifact_path).parent / VALIDATION_FILE
        val = predict_split_reusing(load_model_version(files), frame, "val", cache, store)
        cut = np.array([tset.values[f] for f in FINDINGS]) if tset is not None else DEFAULT_THRESHOLD
        point = evaluate_multilabel(val.labels, val.probabilities, cut)
        scores[version_id] = point.aggregates.get(metric)
    return scores


def candidate_recipe(files: ModelVersionFiles) -> CandidateRecipe | None:
    """The recipe that trained a version, read from its config (an embedding baseline's network
    recipe is its parent's); None when the config does not say."""
    own = files.config
    source = files.parent.config if files.kind in EMBEDDING_KINDS and files.parent is not None else own
    if "data" not in source:
        return None
    data = DataConfig.model_validate(source["data"])
    if files.kind in CLASSICAL_KINDS:
        return CandidateRecipe(ModelKind(files.kind), data, classical=ClassicalConfig.model_validate(own.get("classical", {})))
    if "train" not in source:
        return None
    return CandidateRecipe(ModelKind(files.kind), data, train=TrainConfig.model_validate(source["train"]))


def cross_validation_context(rows: pd.DataFrame, config: EvaluationConfig) -> str:
    """What a cross-validated figure depends on besides the recipe: the folds' settings and the
    studies (keys, image contents, labels). Equal contexts give equal figures, so a recorded
    figure with this context is reused instead of retraining the recipe per fold again."""
    columns = ["study_key", "content_hash", "patient_id", *FINDINGS]
    studies = rows[columns].astype(str).sort_values("study_key").to_numpy().tolist()
    settings = [config.cv_folds, config.random_state, config.cv_min_positives]
    return hashlib.sha256(json.dumps([settings, studies]).encode()).hexdigest()


@task(name="cross-validation-scores")
def cross_validation_scores(
    database_url: str, home: Path, version_ids: Sequence[int], config: EvaluationConfig
) -> tuple[dict[int, float | None], str]:
    """Each version's recipe retrained on ``config.cv_folds`` patient-grouped folds of the
    train and validation studies: its mean macro AUROC over folds (findings with at least
    ``config.cv_min_positives`` held-out positives). None for a version whose recipe is unknown.
    A version whose figure was recorded for the same :func:`cross_validation_context` keeps it
    (computed once per version and data). Returns the figures and that context."""
    frame = labelled_frame(database_url)
    rows = frame[frame["split"].isin(("train", "val"))]
    context = cross_validation_context(rows, config)
    with session_scope(database_url) as session:
        known = {v: registry.recorded_selection(session, v, SelectionBasis.CROSS_VALIDATION, context) for v in version_ids}
    logger = run_logger()
    scores = {v: score for v, score in known.items() if score is not None}
    for version_id, score in scores.items():
        logger.info("version %d: macro AUROC %.4f recorded for these folds and studies, not recomputed", version_id, score)
    todo = [v for v in version_ids if v not in scores]
    recipes = {v: recipe for v in todo if (recipe := candidate_recipe(_files(database_url, v))) is not None}
    results = cross_validate_candidates(
        rows, HomeLayout(Path(home)).cache, recipes, config.cv_folds, config.random_state, config.cv_min_positives
    )
    for version_id, result in results.items():
        spread = f" (sd {result.std:.3f})" if result.std is not None else ""
        logger.info("version %d: %d-fold macro AUROC %s%s", version_id, len(result.fold_scores), result.mean, spread)
    scores.update({v: (results[v].mean if v in results else None) for v in todo})
    return {v: scores[v] for v in version_ids}, context


@task(name="record-selection")
def record_selection(
    database_url: str, scores: dict[int, float | None], basis: SelectionBasis, context: str | None = None
) -> None:
    with session_scope(database_url) as session:
        registry.record_selection(session, scores, basis, context)


@task(name="record-candidate-set")
def record_candidate_set(database_url: str, version_ids: Sequence[int]) -> None:
    """Tell each version which candidates were trained with it (:func:`db.registry.record_candidate_set`)."""
    with session_scope(database_url) as session:
        registry.record_candidate_set(session, version_ids)


def candidate_set(database_url: str, version_id: int) -> list[int]:
    """The candidates trained with ``version_id`` (itself included), which a promotion ranks together."""
    with session_scope(database_url) as session:
        return registry.candidate_set(session, version_id)


@task(name="promote-selected")
def promote_selected(database_url: str, candidate_ids: Sequence[int], metric: str = "macro_auroc", margin: float = 0.0) -> bool:
    """Promote the best candidate on its recorded selection figure when it beats the champion
    (:func:`db.registry.promote_selected`). Returns whether the best candidate is champion now."""
    with session_scope(database_url) as session:
        decision: PromotionDecision = registry.promote_selected(session, candidate_ids, metric, margin)
    run_logger().info("%s: %s", "promoted" if decision.promote else "not promoted", decision.reason)
    return decision.champion


def champion_id(database_url: str) -> int | None:
    with session_scope(database_url) as session:
        current = registry.champion(session)
    return current.id if current is not None else None
