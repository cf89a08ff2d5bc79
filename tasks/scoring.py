"""Nightly scoring: every unlabelled study without a prediction from the champion.

A scoring run is three kinds of task, so that a task runner can spread the work:

- :func:`plan_scoring` starts the ``scoring_runs`` row, picks the champion and its active
  threshold set, lists the pending study ids and splits them into chunks;
- :func:`score_chunk`, once per chunk (in parallel on a Dask cluster, one after another
  otherwise), loads the champion (once per process), scores its studies and commits
  predictions, failures and the run's counts batch by batch;
- :func:`finish_scoring` marks the run completed and publishes the artifact.

The run's counts are SQL increments committed with the batch they count, so parallel chunks
never lose an update and a run killed mid-way says exactly what it committed. Tasks that write
to the database are retried by Prefect on transient database errors (:func:`transient_db_error`);
a retried chunk skips the studies it already committed.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from prefect import task
from prefect.artifacts import create_markdown_artifact

from cxrmodel.evaluation.metrics import apply_thresholds
from cxrmodel.inference import score_studies
from cxrmodel.models.loading import LoadedModel, load_model_version
from db import claims, registry, scoring
from db.engine import session_scope
from db.scoring import DEFAULT_MAX_ATTEMPTS, ScoringPlan
from deployments.settings import Settings
from tasks.artifacts import in_prefect_run, md
from tasks.common import DB_RETRIES, backoff_delays, db_retry_options, flow_run_id, run_logger, transient_db_error
from tasks.progress import StageProgress

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_STALE_MINUTES",
    "ChunkCounts",
    "ScoringPlan",
    "finish_scoring",
    "plan_scoring",
    "run_scoring",
    "score_chunk",
]

DEFAULT_CHUNK_SIZE = 512
#: A running scoring run without a heartbeat (one per committed batch) for this long is dead.
DEFAULT_STALE_MINUTES = 60.0


@dataclass(frozen=True)
class ChunkCounts:
    """What one try of :func:`score_chunk` did: studies scored, failed, and skipped (scored by
    another run), its seconds, and the worker (host and process id) that ran it."""

    scored: int
    failed: int
    skipped: int
    seconds: float
    worker: str


@functools.lru_cache(maxsize=2)
def _loaded_model(database_url: str, model_version_id: int) -> LoadedModel:
    """The model version, loaded (and sha-checked) once per process: every chunk a Dask
    worker runs after its first reuses it."""
    with session_scope(database_url) as session:
        files = registry.model_version_files(session, model_version_id)
    return load_model_version(files)


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (signal 0 checks without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def close_failed_run(database_url: str, scoring_run_id: int, reason: str, budget_s: float) -> bool:
    """Mark the run ``failed`` with ``reason`` and release its claims, waiting out a database
    outage with back-off for up to ``budget_s`` (the failure may be the outage itself).
    Returns whether the run could be closed."""
    logger = run_logger()
    for delay in [*backoff_delays(budget_s), None]:
        try:
            with session_scope(database_url) as session:
                scoring.fail_scoring_run(session, scoring_run_id, reason)
            logger.error("scoring run %d failed: %s", scoring_run_id, reason)
            return True
        except Exception as exc:  # noqa: BLE001 - the run is failing already: never mask its error
            if delay is None or not transient_db_error(exc):
                logger.error("scoring run %d failed (%s) and could not be closed: %s", scoring_run_id, reason, exc)
                return False
            time.sleep(delay)
    return False


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500]


@task(name="plan-scoring", **DB_RETRIES)
def plan_scoring(
    database_url: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    limit: int | None = None,
    stale_after_minutes: float = DEFAULT_STALE_MINUTES,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> ScoringPlan:
    """Start a scoring run for every pending study (at most ``limit``) with the champion and its
    active threshold set; split the study ids into chunks of ``chunk_size``. Runs still marked
    ``running`` without a heartbeat for ``stale_after_minutes`` lost their process: they are
    marked ``abandoned`` first (what they committed stays; their studies are not pending).
    A study that failed ``max_attempts`` tries is ``failed`` and no longer pending; studies
    claimed by a live overlapping run are left to it."""
    with session_scope(database_url) as session:
        plan, abandoned = scoring.plan_scoring_run(
            session,
            chunk_size,
            limit,
            timedelta(minutes=stale_after_minutes),
            flow_run_id(),
            max_attempts,
            owner=(socket.gethostname(), os.getpid()),
            is_alive=process_alive,
        )
    logger = run_logger()
    if abandoned:
        logger.warning(
            "scoring runs %s lost their process (gone, or no heartbeat for %s minutes): marked abandoned",
            abandoned,
            stale_after_minutes,
        )
    logger.info(
        "scoring run %d with %s: %d pending studies in %d chunks",
        plan.scoring_run_id,
        plan.model_name,
        plan.n_candidates,
        len(plan.chunks),
    )
    return plan


@task(name="score-chunk", **DB_RETRIES)
def score_chunk(
    database_url: str,
    plan: ScoringPlan,
    study_ids: Sequence[int],
    batch_size: int = 64,
    device: str = "auto",
    num_workers: int = 0,
) -> ChunkCounts:
    """Score ``study_ids`` with the plan's model, committing each batch's predictions, failures
    and counts together (:func:`db.scoring.commit_batch`). Studies this run already committed
    (an earlier try of this chunk) are left out; so are studies that an overlapping run scored
    first, before this chunk started or while it ran (their predictions are kept, never
    overwritten)."""
    logger = run_logger()
    Settings().apply_torch_threads()  # a Dask worker's process: its share of the cores
    started = time.perf_counter()
    loaded = _loaded_model(database_url, plan.model_version_id)
    with session_scope(database_url) as session:
        done = scoring.studies_done_in_run(session, plan.scoring_run_id, study_ids)
        taken = scoring.studies_scored_by_model(session, plan.model_version_id, study_ids) - done
        todo = [sid for sid in study_ids if sid not in done and sid not in taken]
    with session_scope(database_url) as session:  # committed before the work: others now leave them alone
        held = claims.claim(session, plan.scoring_run_id, todo, plan.lease)
    with session_scope(database_url) as session:
        studies = scoring.studies_by_id(session, [sid for sid in todo if sid in held])
    taken |= set(todo) - held  # claimed by an overlapping run: its work, not repeated here
    scored, failed, skipped = 0, 0, len(taken)
    with StageProgress("cxr-progress-scoring", f"scoring run {plan.scoring_run_id}") as stage:
        on_progress = stage.callback(f"scoring run {plan.scoring_run_id}", "study")
        for batch in score_studies(loaded, studies, batch_size, device, num_workers):
            with session_scope(database_url) as session:
                won = scoring.commit_batch(
                    session,
                    plan,
                    batch.study_ids,
                    batch.probabilities,
                    apply_thresholds(batch.probabilities, plan.thresholds),
                    batch.failures,
                )
            scored += won
            skipped += len(batch.study_ids) - won
            failed += len(batch.failures)
            for sid, reason in batch.failures.items():
                logger.warning("study %d failed: %s", sid, reason)
            on_progress(scored + failed + skipped - len(taken), len(studies))
    counts = ChunkCounts(scored, failed, skipped, time.perf_counter() - started, f"{socket.gethostname()}:{os.getpid()}")
    logger.info(
        "chunk of %d studies on %s: %d scored, %d failed, %d scored by another run, %d done by an earlier try, %.1fs",
        len(study_ids),
        counts.worker,
        scored,
        failed,
        skipped,
        len(done),
        counts.seconds,
    )
    return counts


@task(name="finish-scoring", **DB_RETRIES)
def finish_scoring(
    database_url: str, plan: ScoringPlan, chunk_counts: Sequence[ChunkCounts], seconds: float | None = None
) -> int:
    """Mark the run completed (its counts are already in the row); log and publish the summary.
    Returns the scoring run id."""
    with session_scope(database_url) as session:
        run = scoring.finish_scoring_run(session, plan.scoring_run_id)
    n_scored, n_failed, n_skipped = run.n_scored, run.n_failed, run.n_skipped
    chunk_seconds = sum(c.seconds for c in chunk_counts)
    seconds = chunk_seconds if seconds is None else seconds
    run_logger().info(
        "scoring run %d with %s: %d scored, %d failed, %d skipped in %.1fs (%d chunks, %.1fs of chunk time)",
        plan.scoring_run_id,
        plan.model_name,
        n_scored,
        n_failed,
        n_skipped,
        seconds,
        len(chunk_counts),
        chunk_seconds,
    )
    if in_prefect_run():  # outside a run Prefect would start a throw-away server (deprecated)
        create_markdown_artifact(
            key="cxr-nightly-scoring",
            markdown=f"## Scoring run {plan.scoring_run_id}\n\nModel **{md(plan.model_name)}**, "
            f"threshold set {plan.threshold_set_id}.\n\n"
            "| candidates | scored | failed | skipped | chunks | seconds |\n|---|---|---|---|---|---|\n"
            f"| {plan.n_candidates} | {n_scored} | {n_failed} | {n_skipped} | {len(chunk_counts)} | {seconds:.1f} |",
            description=f"Nightly scoring run {plan.scoring_run_id}",
        )
    return plan.scoring_run_id


def _call(task_, *args, **kwargs):
    """Run a task as a Prefect task run (retries, logs in the UI) inside a flow or task run,
    and as its plain function outside one (tests, benchmarks)."""
    return task_(*args, **kwargs) if in_prefect_run() else task_.fn(*args, **kwargs)


def run_scoring(
    database_url: str,
    batch_size: int = 64,
    device: str = "auto",
    limit: int | None = None,
    num_workers: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    submit: bool = False,
    stale_after_minutes: float = DEFAULT_STALE_MINUTES,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    db_retry_s: float | None = None,
) -> int:
    """Plan, score every chunk, finish; returns the scoring run id. With ``submit`` the chunks
    go to the current flow's task runner all at once (a Dask cluster spreads them); otherwise
    they run one after another in this process.

    Each task waits out a lost database connection for ``db_retry_s`` seconds (default: the
    ``scoring_db_retry_s`` setting) with a doubling back-off. A run that fails anyway is marked
    ``failed`` with the reason and releases its claims (once the database answers, within the
    same budget), so the next run picks up every pending study at once."""
    budget = Settings().scoring_db_retry_s if db_retry_s is None else db_retry_s
    retry = db_retry_options(budget)
    plan_task, chunk_task, finish_task = (t.with_options(**retry) for t in (plan_scoring, score_chunk, finish_scoring))
    started = time.perf_counter()
    plan = _call(
        plan_task,
        database_url,
        chunk_size=chunk_size,
        limit=limit,
        stale_after_minutes=stale_after_minutes,
        max_attempts=max_attempts,
    )
    options = dict(batch_size=batch_size, device=device, num_workers=num_workers)
    try:
        if submit:
            futures = [chunk_task.submit(database_url, plan, ids, **options) for ids in plan.chunks]
            counts = [f.result() for f in futures]
        else:
            counts = [_call(chunk_task, database_url, plan, ids, **options) for ids in plan.chunks]
    except BaseException as exc:
        # the database may be what failed: wait for it (an interrupt does not wait)
        close_failed_run(database_url, plan.scoring_run_id, _failure_reason(exc), budget if isinstance(exc, Exception) else 0)
        raise
    return _call(finish_task, database_url, plan, counts, seconds=time.perf_counter() - started)
