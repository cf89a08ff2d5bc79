"""The whole pipeline: refresh -> train candidates -> calibrate -> select on validation (or
cross-validation) -> evaluate on test, once each -> promote the chosen one -> score -> report."""

from __future__ import annotations

import time
from typing import Literal

from prefect import flow, get_run_logger

from cxrmodel.config import CandidatesConfig, DataConfig, EvaluationConfig, ThresholdConfig, TrainConfig
from cxrmodel.layout import HomeLayout
from flows.params import resolve
from flows.results import CandidatesResult, CandidatesTrained, PipelineResult, RetrainResult, SelectionResult
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
from tasks import selection
from tasks.artifacts import link_run_to_report


def _link_reports(where: dict, report: str, more: dict[str, str] | None = None) -> None:
    """The run's first artifact: a link to the chosen model's evaluation report (then the others)."""
    home_path, _ = resolve(where["home"], where["database_url"])
    link_run_to_report("evaluation report", report, HomeLayout(home_path).reports, more)


@flow(name="cxr-train-candidates")
def train_candidates_flow(
    data: DataConfig = DataConfig(),
    train: TrainConfig = TrainConfig(),
    candidates: CandidatesConfig = CandidatesConfig(),
    thresholds: ThresholdConfig = ThresholdConfig(),
    home: str | None = None,
    database_url: str | None = None,
) -> CandidatesTrained:
    """Train every candidate the configuration's ``candidates:`` section names: seed 004's
    ``network`` (recipe ``train``, with the embedding index) and the ``knn`` and ``mlp`` heads on
    it, the image-only ``chexnet`` DenseNet121 and the ``classical`` pixel-logistic baseline.
    The one trainer behind ``cxr train``, the pipeline, the demo and the weekly retrain. Each
    candidate is calibrated (``thresholds``, on the validation split), ready to evaluate, and
    records its siblings, so that ``cxr evaluate --promote`` ranks the whole set."""
    where = {"home": home, "database_url": database_url}
    trained = train_flow(data, train, candidates.knn, candidates.mlp, **where)
    versions = {"network": trained.model_version_id, **trained.baseline_version_ids}
    if candidates.chexnet is not False:
        versions["chexnet"] = train_flow(
            data, candidates.chexnet, False, False, with_embedding_index=False, **where
        ).model_version_id
    if candidates.classical is not False:
        versions["classical"] = train_classical_flow(data, candidates.classical, **where)
    calibrate_all(versions, thresholds, where)
    selection.record_candidate_set(resolve(home, database_url)[1], list(versions.values()))
    return CandidatesTrained(versions, trained.embedding_index)


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
    candidates: CandidatesConfig = CandidatesConfig(),
    home: str | None = None,
    database_url: str | None = None,
) -> PipelineResult:
    """Run every stage in order and return what it produced. Every model trained is a
    candidate: those ``candidates`` names (:func:`train_candidates_flow`).
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
    trained = train_candidates_flow(data, train, candidates, thresholds, **where)
    versions, index = trained.versions, trained.embedding_index
    lap("train")  # and calibrate: one trainer
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
    candidates: CandidatesConfig = CandidatesConfig(),
    home: str | None = None,
    database_url: str | None = None,
) -> RetrainResult:
    """The weekly job on the GPU pool: train every candidate on the current data, calibrate
    them, rank them (and the champion) on validation or cross-validation, evaluate each on the
    test split once, promote the best if it beats the champion, and render its report."""
    where = {"home": home, "database_url": database_url}
    trained = train_candidates_flow(data, train, candidates, thresholds, **where)
    versions, index = trained.versions, trained.embedding_index
    selection = select_flow(list(versions.values()), evaluation, **where)
    test_evaluations = evaluate_on_test(versions, evaluation, where)
    champion = promote_flow(list(versions.values()), list(test_evaluations.values()), evaluation, **where)
    report = report_flow(_report_evaluation(versions, selection, test_evaluations), **where)
    _link_reports(where, report)
    return RetrainResult(CandidatesResult(versions, selection, test_evaluations, champion, report, index))
