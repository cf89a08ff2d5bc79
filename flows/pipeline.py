"""The whole pipeline: refresh -> train -> calibrate -> evaluate (+ baselines) -> score -> report."""

from __future__ import annotations

import time
from typing import Literal

from prefect import flow, get_run_logger

from cxrmodel.config import DataConfig, EvaluationConfig, ThresholdConfig, TrainConfig
from flows.stages import calibrate_flow, evaluate_flow, refresh_flow, report_flow, score_flow, train_flow


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
) -> dict:
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
    version_id = trained["model_version_id"]
    lap("train")
    calibrate_flow(version_id, thresholds, **where)
    lap("calibrate")
    evaluated = evaluate_flow(version_id, evaluation=evaluation, **where)
    # Embedding baselines: calibrated and evaluated like the network, never promoted; they land
    # in the report's model-comparison table.
    baselines: dict[str, dict] = {}
    for kind in ("knn", "mlp"):
        baseline_id = trained.get(f"{kind}_version_id")
        if baseline_id is not None:
            calibrate_flow(baseline_id, thresholds, **where)
            baselines[kind] = evaluate_flow(baseline_id, promote=False, evaluation=evaluation, **where)
    lap("evaluate")
    if chexnet_baseline is not None:
        recipe = chexnet_baseline.model_copy(update={"architecture": "densenet121"})
        chexnet = train_flow(data, recipe, False, False, with_embedding_index=False, **where)
        calibrate_flow(chexnet["model_version_id"], thresholds, **where)
        baselines["chexnet"] = evaluate_flow(chexnet["model_version_id"], promote=False, evaluation=evaluation, **where)
        lap("chexnet baseline")
    scored = score_flow(**where)
    lap("score")
    report = report_flow(evaluated["evaluation_id"], **where)
    lap("report")
    get_run_logger().info("pipeline done in %.0f s (%s): report %s", sum(timings.values()), timings, report)
    return {
        "refresh": refreshed,
        "model_version_id": version_id,
        "knn_version_id": trained.get("knn_version_id"),
        "mlp_version_id": trained.get("mlp_version_id"),
        "embedding_index": trained.get("embedding_index"),
        "evaluation_id": evaluated["evaluation_id"],
        "baseline_evaluation_id": baselines["knn"]["evaluation_id"] if "knn" in baselines else None,
        "mlp_baseline_evaluation_id": baselines["mlp"]["evaluation_id"] if "mlp" in baselines else None,
        "chexnet_evaluation_id": baselines["chexnet"]["evaluation_id"] if "chexnet" in baselines else None,
        "promoted": evaluated["promoted"],
        "scoring": scored,
        "report": report,
        "timings": timings,
    }


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
) -> dict:
    """The weekly job on the GPU pool: train a challenger on the current data (and the
    baselines asked for), calibrate and evaluate every model it trained, promote the challenger
    if it beats the champion, and render the challenger's report (with the comparison table)."""
    where = {"home": home, "database_url": database_url}
    trained = train_flow(data, train, with_knn_baseline, with_mlp_baseline, **where)
    version_id = trained["model_version_id"]
    calibrate_flow(version_id, thresholds, **where)
    evaluated = evaluate_flow(version_id, True, evaluation, **where)
    baselines = {}
    for kind in ("knn", "mlp"):
        if trained.get(f"{kind}_version_id") is not None:
            calibrate_flow(trained[f"{kind}_version_id"], thresholds, **where)
            baselines[kind] = evaluate_flow(trained[f"{kind}_version_id"], False, evaluation, **where)["evaluation_id"]
    if chexnet_baseline is not None:
        recipe = chexnet_baseline.model_copy(update={"architecture": "densenet121"})
        chexnet = train_flow(data, recipe, False, False, with_embedding_index=False, **where)
        calibrate_flow(chexnet["model_version_id"], thresholds, **where)
        baselines["chexnet"] = evaluate_flow(chexnet["model_version_id"], False, evaluation, **where)["evaluation_id"]
    report = report_flow(evaluated["evaluation_id"], **where)
    return {"model_version_id": version_id, **evaluated, "baseline_evaluation_ids": baselines, "report": report}
