"""The night as an operator runs it, against a real ``prefect server start`` process (scheduler
on), with Prefect's own CLI, a ``process`` worker, ``cxr serve`` and ``cxr reports serve`` as
separate processes, and the report opened from the Prefect UI in headless Chromium.

What the in-process test harness cannot show, and a bad pin breaks silently: that schedules
fire, that Prefect's CLI can list what the server holds, that ``prefect deploy`` registers the
shipped ``prefect.yaml``, and that a worker runs a deployment to Completed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from uuid import UUID

import pytest
import yaml
from conftest import REPO_ROOT, VENV_BIN, free_port, wait_for_http
from prefect.exceptions import ObjectNotFound
from sqlalchemy import select

from cxrmodel.config import DataConfig, EvaluationConfig, SynthConfig, ThresholdConfig, TrainConfig
from cxrmodel.data.synth import generate_dataset
from db import scoring as scoring_store
from db.engine import session_scope
from db.models import RefreshRun, ScoringRun
from deployments.definitions import NIGHTLY, REPORT, RETRAIN, SCORE, SERVED_SUFFIX

pytestmark = [pytest.mark.slow, pytest.mark.server]

TINY = {
    "data": DataConfig(image_size=32, balancing="none"),
    "train": TrainConfig(epochs=1, batch_size=16, pos_weight_max=10.0),
    "thresholds": ThresholdConfig(),
    "evaluation": EvaluationConfig(n_bootstrap=50, embedding_map=False, min_validation_studies=5),
}


@pytest.fixture(scope="module")
def night(prefect_server, tmp_path_factory) -> dict:
    """A home with a champion (trained for one epoch on 120 phantoms) and 12 incoming studies
    not yet registered: what a night refreshes and scores. Also the configuration file the
    deployments read (``CXR_CONFIG``) and the environment a night's host would have."""
    from flows.stages import calibrate_flow, evaluate_flow, refresh_flow, train_flow

    root = tmp_path_factory.mktemp("night")
    data_dir, home = root / "nih", root / "home"
    generate_dataset(data_dir, SynthConfig(n_studies=120, n_incoming=12, image_size=64, seed=5), workers=1)
    where = {"home": str(home), "database_url": f"sqlite:///{home / 'cxr.db'}"}
    refresh_flow(str(data_dir), "synthetic", None, TINY["data"], **where)
    version_id = train_flow(TINY["data"], TINY["train"], False, False, with_embedding_index=False, **where).model_version_id
    calibrate_flow(version_id, TINY["thresholds"], **where)
    evaluate_flow(version_id, True, TINY["evaluation"], **where)
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({k: v.model_dump(mode="json") for k, v in TINY.items()}))
    env = {
        "CXR_HOME": str(home),
        "CXR_DATABASE_URL": where["database_url"],
        "CXR_CONFIG": str(config),
        "CXR_SOURCE_DIR": str(data_dir),
        "CXR_SOURCE": "synthetic",
        "CXR_INCOMING_DIR": str(data_dir / "incoming"),
        "CXR_REPO_DIR": str(REPO_ROOT),
        "CXR_REPORTS_PORT": str(free_port()),
    }
    return {"root": root, "home": home, "url": where["database_url"], "env": env}


def _flow_runs(server, deployment_id: UUID | None = None) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter

    async def read():
        async with server.client() as client:
            filters = (
                {"deployment_filter": DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))} if deployment_id else {}
            )
            return await client.read_flow_runs(flow_run_filter=FlowRunFilter(), **filters)

    return asyncio.run(read())


def _child_runs(server, parent_id: UUID) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async def read():
        async with server.client() as client:
            return await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id]))
            )

    return asyncio.run(read())


def _flow_name(server, flow_id: UUID) -> str:
    async def read():
        async with server.client() as client:
            return (await client.read_flow(flow_id)).name

    return asyncio.run(read())


def _deployment(server, name: str):
    async def read():
        async with server.client() as client:
            return await client.read_deployment_by_name(name)

    return asyncio.run(read())


def _wait_for_final_state(server, flow_run_id: UUID, timeout: float, *logs) -> object:
    async def read():
        async with server.client() as client:
            return await client.read_flow_run(flow_run_id)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = asyncio.run(read())
        if run.state is not None and run.state.is_final():
            return run
        time.sleep(2)
    tails = "\n".join(log.output()[-4000:] for log in logs)
    raise TimeoutError(f"flow run {flow_run_id} not finished after {timeout:.0f} s (state {run.state}):\n{tails}")


def _run_deployment(server, name: str, *params: str) -> UUID:
    """``prefect deployment run NAME [--param k=v ...]``; returns the new flow run's id."""
    args = ["deployment", "run", name]
    for p in params:
        args += ["--param", p]
    done = server.cli(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = sorted(_flow_runs(server, _deployment(server, name).id), key=lambda r: r.created)
    return runs[-1].id


@pytest.mark.parametrize(
    "command",
    [
        ["deployment", "ls"],
        ["flow", "ls"],
        ["flow-run", "ls"],
        ["work-pool", "ls"],
        ["artifact", "ls"],
        ["automation", "ls"],
        ["work-queue", "ls"],
        ["block", "ls"],
        ["variable", "ls"],
        ["concurrency-limit", "ls"],
    ],
)
def test_prefect_cli_lists_against_the_real_server(real_prefect_server, command):
    done = real_prefect_server.cli(*command)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "422" not in done.stdout + done.stderr


def test_prefect_deploy_registers_the_shipped_yaml_and_a_worker_runs_the_night(real_prefect_server, night, tmp_path):
    server, env = real_prefect_server, night["env"]
    for pool in ("cxr-cpu", "cxr-gpu"):
        done = server.cli("work-pool", "create", pool, "--type", "process", "--overwrite")
        assert done.returncode == 0, done.stdout + done.stderr
    done = server.cli("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    listed = server.cli("deployment", "ls")
    assert listed.returncode == 0, listed.stderr
    names = {"cxr-nightly/" + NIGHTLY, "cxr-retrain/" + RETRAIN, "cxr-score/" + SCORE, "cxr-report/" + REPORT}
    for name in names:
        deployment = _deployment(server, name)
        assert deployment.work_pool_name == ("cxr-gpu" if RETRAIN in name else "cxr-cpu")
        assert name.split("/")[1] in listed.stdout
    shipped = yaml.safe_load((REPO_ROOT / "deployments" / "prefect.yaml").read_text())
    retrain = next(d for d in shipped["deployments"] if d["name"] == RETRAIN)
    assert _deployment(server, "cxr-retrain/" + RETRAIN).parameters == retrain["parameters"]

    worker = server.background(
        [str(VENV_BIN / "prefect"), "worker", "start", "--pool", "cxr-cpu", "--type", "process"], tmp_path / "worker.log", env=env
    )
    try:
        run = _wait_for_final_state(server, _run_deployment(server, "cxr-nightly/" + NIGHTLY), 600, worker)
        assert run.state.is_completed(), (run.state, worker.output()[-4000:])
        with session_scope(night["url"]) as session:
            scoring = session.scalars(select(ScoringRun).order_by(ScoringRun.id.desc())).first()
            assert scoring.status == "completed" and scoring.n_scored == 12 and scoring.n_failed == 0
            assert session.scalars(select(RefreshRun).order_by(RefreshRun.id.desc())).first().status == "completed"

        # A failed refresh (its folder is missing): no retry, scoring still runs, the report says so.
        missing = night["root"] / "not-there"
        run = _wait_for_final_state(
            server, _run_deployment(server, "cxr-nightly/" + NIGHTLY, f"source_dir={missing}"), 600, worker
        )
        assert run.state.is_failed()
        assert "refresh failed" in (run.state.message or "")
        with session_scope(night["url"]) as session:
            refresh = session.scalars(select(RefreshRun).order_by(RefreshRun.id.desc())).first()
            assert refresh.status == "failed" and str(missing) in refresh.error and "does not exist" in refresh.error
            scoring = session.scalars(select(ScoringRun).order_by(ScoringRun.id.desc())).first()
            assert scoring.status == "completed" and scoring.n_candidates == 0  # everything was scored the first night
        report = Path(night["home"]) / "reports" / f"scoring_{scoring.id}.html"
        assert "refresh failed" in report.read_text().lower()
        children = _child_runs(server, run.id)
        refresh_child = next(r for r in children if r.name and _flow_name(server, r.flow_id) == "cxr-refresh-data")
        assert refresh_child.state.is_failed() and refresh_child.run_count == 1  # failed once, not retried
    finally:
        worker.stop()


def test_served_schedule_fires_and_the_report_opens_from_the_ui(real_prefect_server, night, tmp_path, browser):
    """``cxr serve`` with a night every minute: the scheduler creates the run, the serving
    process runs it to Completed; the scoring report's link artifact opens, from the Prefect
    UI's artifact page, the report served by ``cxr reports serve``. Stopping ``cxr serve``
    pauses its own deployments only."""
    server, env = real_prefect_server, {**night["env"], "CXR_NIGHTLY_CRON": "* * * * *"}
    # new studies for this night: the previous test's night scored the first batch
    incoming = Path(env["CXR_INCOMING_DIR"])
    with open(incoming / "metadata.csv", "a", encoding="utf-8") as sidecar:
        for i, png in enumerate(sorted(incoming.glob("9*.png"))[:3]):
            (incoming / f"second_night_{i}.png").write_bytes(png.read_bytes())
            sidecar.write(f"second_night_{i}.png,7700{i},50,F,AP\n")
    reports = server.background([str(VENV_BIN / "cxr"), "reports", "serve"], tmp_path / "reports.log", env=env)
    serving = server.background([str(VENV_BIN / "cxr"), "serve"], tmp_path / "serve.log", env=env)
    try:
        wait_for_http(f"http://127.0.0.1:{env['CXR_REPORTS_PORT']}/healthz", 60, reports.process)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                deployment = _deployment(server, "cxr-nightly/" + NIGHTLY + SERVED_SUFFIX)
                break
            except Exception:  # noqa: BLE001 - not registered yet
                time.sleep(2)
        scheduled = []
        while time.monotonic() < deadline and not scheduled:
            scheduled = [r for r in _flow_runs(server, deployment.id) if r.auto_scheduled]
            time.sleep(2)
        assert scheduled, "the scheduler created no run of the served nightly deployment"
        first = min(scheduled, key=lambda r: r.expected_start_time)
        run = _wait_for_final_state(server, first.id, 300, serving)
        assert run.state.is_completed(), (run.state, serving.output()[-4000:])
        with session_scope(night["url"]) as session:
            scoring = session.scalars(select(ScoringRun).order_by(ScoringRun.id.desc())).first()
            assert scoring.status == "completed" and scoring.n_scored >= 3 and scoring.n_failed == 0
            assert scoring_store.study_ids_to_score(session, scoring.model_version_id) == []

        _open_report_from_ui(server, browser, scoring.id, int(env["CXR_REPORTS_PORT"]))
    finally:
        serving.stop()
        reports.stop()
    assert _deployment(server, "cxr-nightly/" + NIGHTLY + SERVED_SUFFIX).paused
    try:  # the pool deployment the other test registered under the plain name is left alone
        assert not _deployment(server, "cxr-nightly/" + NIGHTLY).paused
    except ObjectNotFound:
        pass


def _open_report_from_ui(server, browser, scoring_run_id: int, reports_port: int) -> None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, TaskRunFilter
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    async def read():
        async with server.client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["cxr-scoring-report"])),
                flow_run_filter=FlowRunFilter(),
                task_run_filter=TaskRunFilter(),
            )

    artifact = max(asyncio.run(read()), key=lambda a: a.created)
    url = f"http://127.0.0.1:{reports_port}/reports/scoring_{scoring_run_id}.html"
    assert artifact.data == f"[scoring_{scoring_run_id}.html]({url})"
    browser.get(f"{server.ui_url}/artifacts/artifact/{artifact.id}")
    link = WebDriverWait(browser, 60).until(ec.element_to_be_clickable((By.CSS_SELECTOR, f'a[href="{url}"]')))
    link.click()
    if len(browser.window_handles) > 1:  # the UI opens links in a new tab
        browser.switch_to.window(browser.window_handles[-1])
    WebDriverWait(browser, 30).until(lambda d: d.current_url == url)
    assert f"scoring run {scoring_run_id}" in browser.title.lower()
    assert browser.find_element(By.ID, "run").is_displayed()
