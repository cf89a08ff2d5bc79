"""One flow per stage. Each reads like a table of contents of its tasks; configuration comes
in as typed parameters, so the Prefect UI renders a form for every deployment."""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger

from cxrmodel.config import ClassicalConfig, DataConfig, EvaluationConfig, ThresholdConfig, TrainConfig
from cxrmodel.layout import HomeLayout
from db.statuses import SelectionBasis
from flows.params import resolve
from flows.refresh import refresh_flow as refresh_flow  # re-exported: the data stages live in flows.refresh
from flows.refresh import synthesize_flow as synthesize_flow
from flows.results import EvaluateResult, ScoreResult, SelectionResult, TrainResult
from tasks import selection
from tasks.artifacts import link_run_to_report
from tasks.common import evaluation_ref
from tasks.evaluation import calibrate_thresholds, evaluate_model, publish_evaluation
from tasks.reporting import render_evaluation, render_scoring
from tasks.scoring import DEFAULT_CHUNK_SIZE, DEFAULT_MAX_ATTEMPTS, DEFAULT_STALE_MINUTES, run_scoring
from tasks.similarity import index_embeddings, similar_cases
from tasks.training import train_classical_baseline, train_knn_baseline, train_mlp_baseline, train_network


@flow(name="cxr-train")
def train_flow(
    data: DataConfig = DataConfig(),
    train: TrainConfig = TrainConfig(),
    with_knn_baseline: bool = True,
    with_mlp_baseline: bool = True,
    with_embedding_index: bool = True,
    home: str | None = None,
    database_url: str | None = None,
) -> TrainResult:
    """Train seed 004's network (or, with ``train.architecture='densenet121'``, the image-only
    baseline) on the training split, index the embeddings of every labelled study for
    similar-case retrieval, and fit the k-NN and MLP embedding baselines."""
    home_path, url = resolve(home, database_url)
    version_id = train_network(url, home_path, data, train)
    return TrainResult(
        model_version_id=version_id,
        embedding_index=index_embeddings(url, home_path, version_id) if with_embedding_index else None,
        knn_version_id=train_knn_baseline(url, home_path, version_id) if with_knn_baseline else None,
        mlp_version_id=train_mlp_baseline(url, home_path, version_id) if with_mlp_baseline else None,
    )


@flow(name="cxr-calibrate")
def calibrate_flow(
    model_version_id: int,
    thresholds: ThresholdConfig = ThresholdConfig(),
    home: str | None = None,
    database_url: str | None = None,
) -> int:
    """Fit per-finding decision thresholds on the validation split."""
    home_path, url = resolve(home, database_url)
    return calibrate_thresholds(url, home_path, model_version_id, thresholds)


@flow(name="cxr-train-classical")
def train_classical_flow(
    data: DataConfig = DataConfig(),
    classical: ClassicalConfig = ClassicalConfig(),
    home: str | None = None,
    database_url: str | None = None,
) -> int:
    """Train the classical baseline (per-finding logistic regression on downsampled pixels plus
    age, sex and view) on the training split; returns its candidate model version's id."""
    home_path, url = resolve(home, database_url)
    return train_classical_baseline(url, home_path, data, classical)


@flow(name="cxr-select")
def select_flow(
    candidate_ids: list[int],
    evaluation: EvaluationConfig = EvaluationConfig(),
    home: str | None = None,
    database_url: str | None = None,
) -> SelectionResult:
    """Rank the candidates (and the champion, measured the same way) by
    ``evaluation.promotion_metric`` on the validation split, or, when it holds fewer than
    ``evaluation.min_validation_studies`` studies, by the mean macro AUROC of each candidate's
    recipe retrained over ``evaluation.cv_folds`` patient-grouped folds of train + val. Never
    on the test split. Records each figure and its basis on the model version; promotes nothing."""
    home_path, url = resolve(home, database_url)
    basis = selection.selection_basis(url, evaluation)
    current = selection.champion_id(url)
    ranked = [*candidate_ids, *([current] if current is not None and current not in candidate_ids else [])]
    if basis == SelectionBasis.VALIDATION:
        metric, context = evaluation.promotion_metric, None
        scores = selection.validation_scores(url, home_path, ranked, metric)
    else:
        metric = "macro_auroc"
        scores, context = selection.cross_validation_scores(url, home_path, ranked, evaluation)
    selection.record_selection(url, scores, basis, context)
    known = [(scores[i], -i) for i in candidate_ids if scores.get(i) is not None]
    chosen = -max(known)[1] if known else None
    get_run_logger().info("selection on %s by %s: %s; best candidate %s", basis, metric, scores, chosen)
    return SelectionResult(str(basis), metric, scores, chosen, current)


@flow(name="cxr-promote")
def promote_flow(
    candidate_ids: list[int],
    evaluation_ids: list[int],
    evaluation: EvaluationConfig = EvaluationConfig(),
    database_url: str | None = None,
    home: str | None = None,
) -> bool:
    """Promote the best candidate on its recorded selection figure if it beats the champion's
    on the same basis by more than ``evaluation.promotion_margin``; then publish each of
    ``evaluation_ids`` under the keys of the role its version ends with. Returns whether the
    best candidate is the champion now."""
    _, url = resolve(home, database_url)
    champion = selection.promote_selected(url, candidate_ids, evaluation.promotion_metric, evaluation.promotion_margin)
    for evaluation_id in evaluation_ids:
        publish_evaluation(url, evaluation_id)
    return champion


@flow(name="cxr-evaluate")
def evaluate_flow(
    model_version_id: int,
    promote: bool = True,
    evaluation: EvaluationConfig = EvaluationConfig(),
    split: Literal["test", "val"] = "test",
    publish: bool = True,
    home: str | None = None,
    database_url: str | None = None,
) -> EvaluateResult:
    """Evaluate a model version with its active thresholds (bootstrap intervals, calibration,
    subgroups). With ``promote``: rank the candidates trained with it (the whole set one
    training run registered) against the champion as :func:`select_flow` does (on validation or
    cross-validation, never on this evaluation) and promote the best if it beats the champion
    by ``evaluation.promotion_margin``. With ``publish``: publish the evaluation's artifacts
    under the keys of the role it ends with (champion or not)."""
    home_path, url = resolve(home, database_url)
    evaluation_id = evaluate_model(url, home_path, model_version_id, split=split, config=evaluation)
    promoted = False
    if promote:
        candidates = selection.candidate_set(url, model_version_id)
        select_flow(candidates, evaluation, home=home, database_url=database_url)
        promoted = selection.promote_selected(url, candidates, evaluation.promotion_metric, evaluation.promotion_margin)
    if publish:
        publish_evaluation(url, evaluation_id)
    return EvaluateResult(evaluation_id, promoted)


def dask_task_runner(address: str | None = None, n_workers: int = 2):
    """prefect-dask's ``DaskTaskRunner``: the scheduler at ``address`` (an existing cluster,
    e.g. ``tcp://scheduler:8786``, whose worker processes may sit on other hosts), or a
    temporary ``LocalCluster`` of ``n_workers`` single-thread workers inside this process
    (torch and PIL release the GIL, the model is loaded once, and there are no worker processes
    to start: spawning them costs tens of seconds of imports on a small host)."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": False, "dashboard_address": ":0"}
    )


@flow(name="cxr-score-chunks")
def score_chunks_flow(
    database_url: str,
    batch_size: int,
    device: str,
    num_workers: int,
    chunk_size: int,
    stale_after_minutes: float = DEFAULT_STALE_MINUTES,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> int:
    """One scoring run whose chunks go to this flow's task runner all at once (``score_flow``
    runs it with a ``DaskTaskRunner``); planning and finishing run here. Returns the run id."""
    return run_scoring(
        database_url,
        batch_size,
        device,
        num_workers=num_workers,
        chunk_size=chunk_size,
        submit=True,
        stale_after_minutes=stale_after_minutes,
        max_attempts=max_attempts,
    )


@flow(name="cxr-score")
def score_flow(
    batch_size: int = 64,
    device: str = "auto",
    num_workers: int = 0,
    render_report: bool = True,
    task_runner: Literal["default", "dask"] = "default",
    dask_address: str | None = None,
    dask_workers: int = 2,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    stale_after_minutes: float = DEFAULT_STALE_MINUTES,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    home: str | None = None,
    database_url: str | None = None,
) -> ScoreResult:
    """Score every pending study with the champion model; record failures; write the report.

    The pending studies are split into chunks of ``chunk_size``. With ``task_runner='default'``
    the chunks run one after another in this process; with ``'dask'`` they run in parallel on
    a Dask cluster: the scheduler at ``dask_address`` (workers must read the image paths and
    reach the database), or a temporary local cluster of ``dask_workers`` workers.
    ``num_workers`` spawned DataLoader processes decode images while the network runs (worth it
    for large nights; for a few hundred studies their start-up costs more than it saves).
    An earlier run still marked running without a heartbeat for ``stale_after_minutes`` (its
    process was killed) is marked abandoned. A study whose scoring failed ``max_attempts``
    times is marked failed and skipped until its file changes."""
    home_path, url = resolve(home, database_url)
    if dask_address and task_runner != "dask":
        raise ValueError("dask_address is only used with task_runner='dask'")
    if task_runner == "dask":
        scoring = score_chunks_flow.with_options(task_runner=dask_task_runner(dask_address, dask_workers))
        run_id = scoring(url, batch_size, device, num_workers, chunk_size, stale_after_minutes, max_attempts)
    else:
        run_id = run_scoring(
            url,
            batch_size,
            device,
            num_workers=num_workers,
            chunk_size=chunk_size,
            stale_after_minutes=stale_after_minutes,
            max_attempts=max_attempts,
        )
    report = render_scoring(url, home_path, run_id) if render_report else None
    if report is not None:
        link_run_to_report("scoring report", report, HomeLayout(home_path).reports)
    return ScoreResult(run_id, report)


@flow(name="cxr-similar")
def similar_flow(study_key: str, k: int = 5, home: str | None = None, database_url: str | None = None) -> list[dict]:
    """The ``k`` labelled studies most similar to one study (labelled or incoming) in the
    champion's embedding space, with cosine similarity and their positive findings."""
    home_path, url = resolve(home, database_url)
    return similar_cases(url, home_path, study_key, k)


@flow(name="cxr-report")
def report_flow(evaluation_id: int | str = "latest", home: str | None = None, database_url: str | None = None) -> str:
    """Render the HTML evaluation report (with the model-comparison table) of one evaluation:
    its id, or ``latest`` for the newest."""
    home_path, url = resolve(home, database_url)
    report = render_evaluation(url, home_path, evaluation_ref(url, evaluation_id))
    link_run_to_report("evaluation report", report, HomeLayout(home_path).reports)
    return report
