"""The whole pipeline: refresh -> train candidates -> calibrate -> select on validation (or
cross-validation) -> evaluate on test, once each -> promote the chosen one -> score -> report."""

from __future__ import annotations

import time
from typing import Literal

from prefect import flow, get_run_logger

from cxrmodel.config import ClassicalConfig, DataConfig, EvaluationConfig, ThresholdConfig, TrainConfig
from cxrmodel.layout import HomeLayout
from cxrmodel.models.kinds import ModelKind
from flows.params import resolve
from flows.results import CandidatesResult, PipelineResult, RetrainResult, SelectionResult
from flows.stages import (
    calibrate_flow,
    evaluate_flow,
    promote_flow,
    refresh_flow,
    report_flow,
    score_flow,
    select_flow,
    train_classical_flow,
    train_flow,
)
from tasks.artifacts import link_run_to_report


def _link_reports(where: dict, report: str, more: dict[str, str] | None = None) -> None:
    """The run's first artifact: a link to the chosen model's evaluation report (then the others)."""
    home_path, _ = resolve(where["home"], where["database_url"])
    link_run_to_report("evaluation report", report, HomeLayout(home_path).reports, more)


def train_candidates(
    data: DataConfig,
    train: TrainConfig,
    with_knn_baseline: bool,
    with_mlp_baseline: bool,
    chexnet_baseline: TrainConfig | None,
    classical_baseline: ClassicalConfig | None,
    where: dict,
) -> tuple[dict[str, int], str | None]:
    """Every candidate of a run, by name: seed 004's ``network`` (with the embedding index) and
    the ``knn`` and ``mlp`` heads on it, the image-only ``chexnet`` DenseNet121 and the
    ``classical`` pixel-logistic baseline when asked for. Returns (versions, embedding index)."""
    trained = train_flow(data, train, with_knn_baseline, with_mlp_baseline, **where)
    versions = {"network": trained.model_version_id, **trained.baseline_version_ids}
    if chexnet_baseline is not None:
        recipe = chexnet_baseline.model_copy(update={"architecture": ModelKind.DENSENET121})
        versions["chexnet"] = train_flow(data, recipe, False, False, with_embedding_index=False, **where).model_version_id
    if classical_baseline is not None:
        versions["classical"] = train_classical_flow(data, classical_baseline, **where)
    return versions, trained.embedding_index


def calibrate_all(versions: dict[str, int], thresholds: ThresholdConfig, where: dict) -> None:
    for version_id in versions.values():
        calibrate_flow(version_id, thresholds, **where)


def evaluate_on_test(versions: dict[str, int], evaluation: EvaluationConfig, where: dict) -> dict[str, int]:
    """Each candidate on the test split, once, after the choice was made (promotion and
    publishing wait for :func:`flows.stages.promote_flow`)."""
    return {
        name: evaluate_flow(version_id, promote=False, evaluation=evaluation, publish=False, **where).evaluation_id
        for name, version_id in versions.items()
    }


def _report_evaluation(versions: dict[str, int], selection: SelectionResult, test_evaluations: dict[str, int]) -> int:
    """The evaluation the run's report shows: the chosen candidate's (seed 004's network when none was)."""
    chosen = next((n for n, v in versions.items() if v == selection.chosen_id), "network")
    return test_evaluations[chosen]


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
    classical_baseline: ClassicalConfig | None = None,
    home: str | None = None,
    database_url: str | None = None,
) -> PipelineResult:
    """Run every stage in order and return what it produced. Every model trained is a
    candidate: seed 004's network, the k-NN and MLP heads on it, the image-only DenseNet121
    (``chexnet_baseline``, a training recipe) and the classical baseline (``classical_baseline``).
    The best on validation (cross-validation when the validation split is small) becomes
    champion if it beats the current one; the test split only reports."""
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
    versions, index = train_candidates(
        data, train, with_knn_baseline, with_mlp_baseline, chexnet_baseline, classical_baseline, where
    )
    lap("train")
    calibrate_all(versions, thresholds, where)
    lap("calibrate")
    selection = select_flow(list(versions.values()), evaluation, **where)
    lap("select")
    test_evaluations = evaluate_on_test(versions, evaluation, where)
    lap("evaluate")
    champion = promote_flow(list(versions.values()), list(test_evaluations.values()), evaluation, **where)
    lap("promote")
    scored = score_flow(**where)
    lap("score")
    report = report_flow(_report_evaluation(versions, selection, test_evaluations), **where)
    lap("report")
    _link_reports(where, report, {"scoring report": scored.report} if scored.report else None)
    candidates = CandidatesResult(versions, selection, test_evaluations, champion, report, index)
    get_run_logger().info(
        "pipeline done in %.0f s (%s): chosen %s, report %s", sum(timings.values()), timings, candidates.chosen, candidates.report
    )
    return PipelineResult(refresh=refreshed, candidates=candidates, scoring=scored, timings=timings)


@flow(name="cxr-retrain")
def retrain_flow(
    data: DataConfig = DataConfig(),
    train: TrainConfig = TrainConfig(),
    thresholds: ThresholdConfig = ThresholdConfig(),
    evaluation: EvaluationConfig = EvaluationConfig(),
    with_knn_baseline: bool = True,
    with_mlp_baseline: bool = True,
    chexnet_baseline: TrainConfig | None = None,
    classical_baseline: ClassicalConfig | None = None,
    home: str | None = None,
    database_url: str | None = None,
) -> RetrainResult:
    """The weekly job on the GPU pool: train every candidate on the current data, calibrate
    them, rank them (and the champion) on validation or cross-validation, evaluate each on the
    test split once, promote the best if it beats the champion, and render its report."""
    where = {"home": home, "database_url": database_url}
    versions, index = train_candidates(
        data, train, with_knn_baseline, with_mlp_baseline, chexnet_baseline, classical_baseline, where
    )
    calibrate_all(versions, thresholds, where)
    selection = select_flow(list(versions.values()), evaluation, **where)
    test_evaluations = evaluate_on_test(versions, evaluation, where)
    champion = promote_flow(list(versions.values()), list(test_evaluations.values()), evaluation, **where)
    report = report_flow(_report_evaluation(versions, selection, test_evaluations), **where)
    _link_reports(where, report)
    return RetrainResult(CandidatesResult(versions, selection, test_evaluations, champion, report, index))
