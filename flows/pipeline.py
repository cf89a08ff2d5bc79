"""The whole pipeline: refresh -> train -> calibrate -> evaluate (+ baselines) -> score -> report."""

from __future__ import annotations

import time
from typing import Literal

from prefect import flow, get_run_logger

from cxrmodel.config import DataConfig, EvaluationConfig, ThresholdConfig, TrainConfig
from cxrmodel.models.kinds import ModelKind
from flows.results import EvaluateResult, PipelineResult, RetrainResult, TrainResult
from flows.stages import calibrate_flow, evaluate_flow, refresh_flow, report_flow, score_flow, train_flow


def _evaluate_embedding_baselines(
    trained: TrainResult, thresholds: ThresholdConfig, evaluation: EvaluationConfig, where: dict
) -> dict[str, EvaluateResult]:
    """Calibrate and evaluate the embedding baselines fitted on the network, never promoted:
    they land in the report's comparison table. Keys ``knn`` and ``mlp``."""
    baselines = {}
    for kind, baseline_id in trained.baseline_version_ids.items():
        calibrate_flow(baseline_id, thresholds, **where)
        baselines[kind] = evaluate_flow(baseline_id, False, evaluation, **where)
    return baselines


def _chexnet_baseline(
    data: DataConfig, recipe: TrainConfig, thresholds: ThresholdConfig, evaluation: EvaluationConfig, where: dict
) -> EvaluateResult:
    """Train, calibrate and evaluate the image-only DenseNet121 with ``recipe`` (never promoted)."""
    chexnet = train_flow(
        data, recipe.model_copy(update={"architecture": ModelKind.DENSENET121}), False, False, with_embedding_index=False, **where
    )
    calibrate_flow(chexnet.model_version_id, thresholds, **where)
    return evaluate_flow(chexnet.model_version_id, False, evaluation, **where)


def _evaluation_id(result: EvaluateResult | None) -> int | None:
    return result.evaluation_id if result is not None else None


@flow(name="cxr-pipeline")
def pipeline_flow(
    source_dir: str,
    source: Literal["synthetic", "nih-local"] = "synthetic",
    incoming_dir: str | None = None,
    data: DataConfig = DataConfig(),
    train: TrainConfig = TrainConfig(),
    thresholds: ThresholdConfig = ThresholdConfig(),
    evaluation: EvaluationConfig = EvaluationConfig(),
    with_knn_baseline: bool = True,
    with_mlp_baseline: bool = True,
    chexnet_baseline: TrainConfig | None = None,
    home: str | None = None,
    database_url: str | None = None,
) -> PipelineResult:
    """Run every stage in order and return the ids of what it produced. ``chexnet_baseline``
    (a training recipe) adds the image-only DenseNet121 baseline, trained, calibrated and
    evaluated through the same flows, never promoted."""
    where = {"home": home, "database_url": database_url}
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(now - clock, 2)
        clock = now

    refreshed = refresh_flow(source_dir, source, incoming_dir, data, **where)
    lap("refresh")
    trained = train_flow(data, train, with_knn_baseline, with_mlp_baseline, **where)
    lap("train")
    calibrate_flow(trained.model_version_id, thresholds, **where)
    lap("calibrate")
    evaluated = evaluate_flow(trained.model_version_id, evaluation=evaluation, **where)
    baselines = _evaluate_embedding_baselines(trained, thresholds, evaluation, where)
    lap("evaluate")
    if chexnet_baseline is not None:
        baselines["chexnet"] = _chexnet_baseline(data, chexnet_baseline, thresholds, evaluation, where)
        lap("chexnet baseline")
    scored = score_flow(**where)
    lap("score")
    report = report_flow(evaluated.evaluation_id, **where)
    lap("report")
    get_run_logger().info("pipeline done in %.0f s (%s): report %s", sum(timings.values()), timings, report)
    return PipelineResult(
        refresh=refreshed,
        model_version_id=trained.model_version_id,
        knn_version_id=trained.knn_version_id,
        mlp_version_id=trained.mlp_version_id,
        embedding_index=trained.embedding_index,
        evaluation_id=evaluated.evaluation_id,
        baseline_evaluation_id=_evaluation_id(baselines.get("knn")),
        mlp_baseline_evaluation_id=_evaluation_id(baselines.get("mlp")),
        chexnet_evaluation_id=_evaluation_id(baselines.get("chexnet")),
        promoted=evaluated.promoted,
        scoring=scored,
        report=report,
        timings=timings,
    )


@flow(name="cxr-retrain")
def retrain_flow(
    data: DataConfig = DataConfig(),
    train: TrainConfig = TrainConfig(),
    thresholds: ThresholdConfig = ThresholdConfig(),
    evaluation: EvaluationConfig = EvaluationConfig(),
    with_knn_baseline: bool = True,
    with_mlp_baseline: bool = True,
    chexnet_baseline: TrainConfig | None = None,
    home: str | None = None,
    database_url: str | None = None,
) -> RetrainResult:
    """The weekly job on the GPU pool: train a challenger on the current data (and the
    baselines asked for), calibrate and evaluate every model it trained, promote the challenger
    if it beats the champion, and render the challenger's report (with the comparison table)."""
    where = {"home": home, "database_url": database_url}
    trained = train_flow(data, train, with_knn_baseline, with_mlp_baseline, **where)
    calibrate_flow(trained.model_version_id, thresholds, **where)
    evaluated = evaluate_flow(trained.model_version_id, True, evaluation, **where)
    baselines = _evaluate_embedding_baselines(trained, thresholds, evaluation, where)
    if chexnet_baseline is not None:
        baselines["chexnet"] = _chexnet_baseline(data, chexnet_baseline, thresholds, evaluation, where)
    report = report_flow(evaluated.evaluation_id, **where)
    return RetrainResult(
        trained.model_version_id,
        evaluated.evaluation_id,
        evaluated.promoted,
        {kind: result.evaluation_id for kind, result in baselines.items()},
        report,
    )
