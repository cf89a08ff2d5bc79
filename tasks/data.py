"""Data tasks: synthesise, ingest a labelled folder, fill the image cache, register an incoming
folder, fetch from the Hugging Face Hub, open and close the refresh run.

Each reads its source with :mod:`cxrmodel.data` and writes with :mod:`db.studies` and
:mod:`db.refresh` in one transaction; the task adds retries on transient database errors and
the log line.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from prefect import task

from cxrmodel.config import DataConfig, HubConfig, SynthConfig
from cxrmodel.data.cache import ImageCache
from cxrmodel.data.hub import HubSource, fetch_dataset
from cxrmodel.data.incoming import INCOMING, read_incoming_folder
from cxrmodel.data.labelled import read_labelled_dataset
from cxrmodel.data.metadata import QuarantineRecord
from cxrmodel.data.records import StudyBatch
from cxrmodel.data.synth import generate_dataset
from cxrmodel.data.synth.dataset import SynthSummary
from db import refresh, studies
from db.engine import session_scope
from db.refresh import RefreshTotals
from db.statuses import StudyStatus
from tasks.common import DB_RETRIES, retry_unless_user_error, run_logger
from tasks.progress import StageProgress


@task(name="generate-synthetic-dataset")
def generate_synthetic(root: Path, synth: SynthConfig) -> SynthSummary:
    """Write (or rewrite identically) the synthetic NIH-layout dataset."""
    summary = generate_dataset(root, synth)
    run_logger().info(
        "synthetic dataset: %d studies of %d patients, %d incoming, %d healthy",
        summary.n_studies,
        summary.n_patients,
        summary.n_incoming,
        summary.n_no_finding,
    )
    return summary


def store_batch(database_url: str, batch: StudyBatch, refresh_run_id: int, source: str) -> RefreshTotals:
    """One source's studies, labels, splits and quarantined rows, in one transaction."""
    with session_scope(database_url) as session:
        counts = studies.sync_studies(session, batch.records, batch.labels)
        if batch.splits:
            studies.set_splits(session, batch.splits)
        quarantined = [*batch.quarantined, *counts.rejected]
        refresh.record_quarantine(session, refresh_run_id, source, quarantined)
        refresh.beat(session, refresh_run_id)
    return RefreshTotals(batch.n_rows, counts.added, counts.updated, counts.unchanged, len(quarantined))


@task(name="ingest-labelled-studies", **DB_RETRIES)
def ingest_labelled(database_url: str, root: Path, source: str, data: DataConfig, refresh_run_id: int) -> RefreshTotals:
    """Parse the NIH metadata, quarantine bad rows, assign patient-level splits, upsert studies."""
    with StageProgress("cxr-progress-refresh", f"refresh of {root.name}") as stage:
        batch = read_labelled_dataset(root, source, data, on_progress=stage.callback("refresh: hashing images", "img"))
    totals = store_batch(database_url, batch, refresh_run_id, source)
    run_logger().info("studies: %s; splits: %s", totals, batch.split_counts())
    return totals


@task(name="build-image-cache")
def build_cache(
    database_url: str, cache_root: Path, image_size: int, refresh_run_id: int, source: str, workers: int = 0
) -> RefreshTotals:
    """Decode every labelled study once into the resized cache, keyed by the content hash the
    refresh stored (no file is hashed again). Unreadable images are quarantined; a previously
    unreadable study whose file now decodes becomes active again."""
    with session_scope(database_url) as session:
        files = studies.labelled_files(session)
    with StageProgress("cxr-progress-cache", f"image cache {image_size}px") as stage:
        failures = ImageCache(cache_root, image_size).build(
            [(key, path, content_hash) for key, path, content_hash, _ in files],
            workers=workers,
            on_progress=stage.callback(f"cache {image_size}px", "img"),
        )
    recovered = [key for key, _, _, status in files if status == StudyStatus.QUARANTINED and key not in failures]
    with session_scope(database_url) as session:
        studies.set_status(session, failures, StudyStatus.QUARANTINED)
        refresh.record_quarantine(
            session,
            refresh_run_id,
            source,
            [QuarantineRecord(k, None, f"unreadable image: {r}", None) for k, r in failures.items()],
        )
        studies.set_status(session, recovered, StudyStatus.ACTIVE)
        refresh.beat(session, refresh_run_id)
    run_logger().info(
        "image cache %dpx: %d studies, %d unreadable, %d recovered", image_size, len(files), len(failures), len(recovered)
    )
    return RefreshTotals(quarantined=len(failures))


@task(name="register-incoming-studies", **DB_RETRIES)
def register_incoming(database_url: str, folder: Path, refresh_run_id: int, store: Path | None = None) -> RefreshTotals:
    """Register every PNG/DICOM file in ``folder`` as an unlabelled study awaiting scoring, with
    age, sex and view from its DICOM tags and/or the folder's sidecar (``metadata.csv`` or
    ``metadata.json``); sidecar problems are quarantined with their reason, never fatal. With
    ``store`` each file is kept there by its content (the study's image path); a file whose name
    an earlier, different file used becomes a new study (:func:`db.studies.keys_by_content`)."""
    batch = read_incoming_folder(folder, store)
    with session_scope(database_url) as session:
        batch.records = studies.keys_by_content(session, batch.records)
    totals = store_batch(database_url, batch, refresh_run_id, INCOMING)
    run_logger().info("incoming %s: %s", folder, totals)
    return totals


@task(name="fetch-from-hugging-face", retries=3, retry_delay_seconds=30, retry_condition_fn=retry_unless_user_error)
def fetch_from_hub(hub: HubConfig, target: Path) -> str:
    """Metadata first, then the image archives (cached, resumable, safely extracted) into the
    NIH layout under ``target``; honours HF_HUB_OFFLINE."""
    source = HubSource(
        repo_id=hub.repo_id,
        revision=hub.revision,
        archive_pattern=hub.archive_pattern,
        archives=tuple(hub.archives),
        cache_dir=hub.cache_dir,
    )
    fetch_dataset(source, Path(target))
    run_logger().info("fetched %s@%s into %s", hub.repo_id, hub.revision, target)
    return str(target)


#: A running refresh without a heartbeat (one per step) for this long lost its process.
REFRESH_STALE_MINUTES = 360.0


@task(name="start-refresh-run", **DB_RETRIES)
def start_refresh(
    database_url: str,
    source: str,
    location: str,
    flow_run_id: str | None,
    stale_after_minutes: float = REFRESH_STALE_MINUTES,
) -> int:
    """Mark failed the refresh runs left ``running`` by a lost process (:mod:`db.runs`), then
    open this one."""
    with session_scope(database_url) as session:
        stale = refresh.fail_stale_refresh_runs(session, timedelta(minutes=stale_after_minutes))
        run_id = refresh.start_refresh(session, source, location, flow_run_id).id
    if stale:
        run_logger().warning("refresh runs %s had no heartbeat for %g minutes: marked failed", stale, stale_after_minutes)
    return run_id


@task(name="finish-refresh-run", **DB_RETRIES)
def finish_refresh(database_url: str, refresh_run_id: int, counts: list[RefreshTotals]) -> RefreshTotals:
    """Mark the refresh run completed with the summed counts of its steps; return them."""
    totals = RefreshTotals.sum(counts)
    with session_scope(database_url) as session:
        refresh.finish_refresh(session, refresh_run_id, totals)
    return totals


def fail_refresh(database_url: str, refresh_run_id: int, error: BaseException) -> None:
    """Mark the refresh run failed with a one-line reason (best effort: the database may be
    what failed)."""
    reason = f"{type(error).__name__}: {error}".splitlines()[0][:500]
    try:
        with session_scope(database_url) as session:
            refresh.finish_refresh(session, refresh_run_id, error=reason)
    except Exception:  # noqa: BLE001 - the original error is the one to report
        run_logger().exception("could not mark refresh run %d failed", refresh_run_id)
