"""The data stages: synthesise phantoms, and refresh the labelled studies and the incoming ones.

Kept apart from :mod:`flows.stages` so that ``cxr refresh`` and ``cxr synth`` import neither
torch nor the model code (about half of a flow command's import time); :mod:`flows.stages`
re-exports both flows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger

from cxrmodel.config import DataConfig, HubConfig, SynthConfig
from cxrmodel.data.synth.dataset import SynthSummary
from cxrmodel.io import MissingInputError, require_folder
from cxrmodel.layout import HomeLayout
from db.engine import require_current_schema
from flows.params import resolve
from flows.results import RefreshResult
from tasks import data as data_tasks
from tasks.artifacts import link_run_to_report
from tasks.common import flow_run_id
from tasks.dataset_report import render_dataset

__all__ = ["refresh_flow", "synthesize_flow"]


@flow(name="cxr-synthesize", log_prints=True)
def synthesize_flow(root: str, synth: SynthConfig = SynthConfig()) -> SynthSummary:
    """Generate the synthetic NIH-layout dataset (labelled studies and an incoming batch)."""
    return data_tasks.generate_synthetic(Path(root), synth)


@flow(name="cxr-refresh-data")
def refresh_flow(
    source_dir: str | None = None,
    source: Literal["synthetic", "nih-local", "huggingface"] = "synthetic",
    incoming_dir: str | None = None,
    data: DataConfig = DataConfig(),
    hub: HubConfig | None = None,
    dataset_report: bool = True,
    home: str | None = None,
    database_url: str | None = None,
) -> RefreshResult:
    """Read the labelled metadata in ``source_dir`` (quarantine bad rows, split by patient,
    upsert studies, fill the image cache, write the dataset report) and register the new
    studies in ``incoming_dir`` for scoring; either may be left out. With
    ``source='huggingface'`` the dataset is first fetched from ``hub`` into ``source_dir``;
    every source then takes the same code path. A missing folder fails the run at once (no
    retries) and the refresh run is recorded as failed with the reason."""
    home_path, url = resolve(home, database_url)
    if source_dir is None and incoming_dir is None:
        raise MissingInputError("nothing to refresh: give source_dir and/or incoming_dir (CXR_SOURCE_DIR, CXR_INCOMING_DIR)")
    require_current_schema(url, create=True)  # a fresh database is created; an older schema is refused
    run_id = data_tasks.start_refresh(url, source if source_dir else "incoming", str(source_dir or incoming_dir), flow_run_id())
    try:
        counts = []
        if source_dir is not None:
            if source == "huggingface":
                if hub is None:
                    raise ValueError("source 'huggingface' needs the hub parameter (repo_id and revision)")
                Path(source_dir).mkdir(parents=True, exist_ok=True)
                data_tasks.fetch_from_hub(hub, Path(source_dir))
            root = require_folder(source_dir, "source folder")
            counts.append(data_tasks.ingest_labelled(url, root, source, data, run_id))
            counts.append(data_tasks.build_cache(url, HomeLayout(home_path).cache, data.image_size, run_id, source))
        if incoming_dir is not None:
            incoming = require_folder(incoming_dir, "incoming folder")
            counts.append(data_tasks.register_incoming(url, incoming, run_id, home_path / "incoming-store"))
        totals = data_tasks.finish_refresh(url, run_id, counts)
    except BaseException as exc:
        data_tasks.fail_refresh(url, run_id, exc)
        raise
    report = (
        render_dataset(url, home_path, data.balancing, run_id, data.balancing_seed)
        if dataset_report and source_dir is not None
        else None
    )
    if report is not None:
        link_run_to_report("dataset report", report, HomeLayout(home_path).reports)
    get_run_logger().info("refresh %d: %s", run_id, totals)
    return RefreshResult(run_id, totals.rows, totals.added, totals.updated, totals.unchanged, totals.quarantined, report)
