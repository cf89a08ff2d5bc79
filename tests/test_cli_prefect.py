"""The CLI and the Prefect server: a command reuses the server PREFECT_API_URL names (no
temporary server of its own), a user's mistake inside a flow run is one line, never retried,
and leaves no run ``running``; long steps publish progress artifacts."""

from __future__ import annotations

import asyncio
import shutil

import pytest
from sqlalchemy import select
from test_cli_errors import cxr

from cxrmodel.config import DataConfig, SynthConfig, TrainConfig
from cxrmodel.data.synth import generate_dataset
from db.engine import session_scope
from db.models import RefreshRun, ScoringRun

pytestmark = pytest.mark.slow


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def _flow_runs(name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def read():
        async with get_client() as client:
            return await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[name])))

    return asyncio.run(read())


def _artifacts(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC
            )

    return asyncio.run(read())


def test_a_command_reuses_the_running_server_and_a_mistake_in_a_flow_is_one_line(prefect_server, tmp_path):
    """``cxr refresh`` of a folder without NIH metadata, pointed at the session's server: the
    flow run lands there, the command starts no server, the refresh run is failed (not
    running) with the reason, the ingest task is not retried, and the error is one line."""
    empty = tmp_path / "no-metadata"
    empty.mkdir()
    home = tmp_path / "home"
    before = len(_flow_runs("cxr-refresh-data"))
    result = cxr(home, "refresh", str(empty), "--source", "synthetic", extra_env={"PREFECT_API_URL": _api_url()})
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert result.stderr.strip().splitlines()[-1].startswith("error: no Data_Entry_2017")
    assert "Traceback" not in output
    assert "Starting temporary server" not in output
    assert "Retrying" not in output and "AwaitingRetry" not in output
    runs = _flow_runs("cxr-refresh-data")
    assert len(runs) == before + 1  # the command's flow run is on this server
    assert any(run.state is not None and run.state.is_failed() for run in runs)
    # The command's writes are in cxr.db itself (checkpointed at exit): a copy of that one file
    # without its -wal holds the refresh run.
    alone = tmp_path / "copied" / "cxr.db"
    alone.parent.mkdir()
    shutil.copyfile(home / "cxr.db", alone)
    with session_scope(f"sqlite:///{alone}") as session:
        (refresh_run,) = session.scalars(select(RefreshRun)).all()
        assert refresh_run.status == "failed" and "Data_Entry_2017" in refresh_run.error


def test_refresh_training_and_scoring_publish_progress_artifacts(prefect_server, tmp_path, one_torch_thread):
    from db import registry
    from flows.stages import calibrate_flow, refresh_flow, score_flow, train_flow

    root = tmp_path / "synthetic"
    generate_dataset(root, SynthConfig(n_studies=60, n_incoming=5, image_size=32, seed=5), workers=1)
    url = f"sqlite:///{tmp_path / 'cxr.db'}"
    where = {"home": str(tmp_path / "home"), "database_url": url}
    data = DataConfig(image_size=32, balancing="none")
    refresh_flow(str(root), "synthetic", str(root / "incoming"), data, dataset_report=False, **where)
    trained = train_flow(data, TrainConfig(epochs=2, batch_size=16), False, False, with_embedding_index=False, **where)
    calibrate_flow(trained.model_version_id, **where)
    with session_scope(url) as session:
        registry.promote(session, trained.model_version_id, "progress test")
    scored = score_flow(render_report=False, **where)
    with session_scope(url) as session:
        run = session.get(ScoringRun, scored.scoring_run_id)
        n_candidates, n_scored, n_failed = run.n_candidates, run.n_scored, run.n_failed
    assert n_scored == 5 and n_candidates == n_scored + n_failed, (n_candidates, n_scored, n_failed)
    for key in ("cxr-progress-refresh", "cxr-progress-cache", "cxr-progress-training", "cxr-progress-scoring"):
        newest = _artifacts(key)[0]
        assert newest.type == "progress" and float(newest.data) == 100.0, (key, newest.data)
    assert "epoch 2/2" in _artifacts("cxr-progress-training")[0].description
    scoring = _artifacts("cxr-progress-scoring")[0].description
    assert f"scoring run {scored.scoring_run_id}: {n_candidates}/{n_candidates} study" in scoring, scoring
