"""Deployments register against the test Prefect server with the expected schedules, and
prefect.yaml says the same as the Python definitions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from deployments.definitions import REFRESH, REPORT, RETRAIN, SCORING, ScheduleSettings, build_deployments

PREFECT_YAML = Path(__file__).resolve().parent.parent / "deployments" / "prefect.yaml"


def test_deployments_register_with_schedules(prefect_server, monkeypatch):
    from prefect.client.orchestration import get_client

    monkeypatch.setenv("CXR_TIMEZONE", "Europe/Madrid")
    ids = {d.name: d.apply() for d in build_deployments(ScheduleSettings())}

    async def read():
        async with get_client() as client:
            return {name: await client.read_deployment(i) for name, i in ids.items()}

    deployed = asyncio.run(read())
    crons = {name: [(s.schedule.cron, s.schedule.timezone) for s in d.schedules] for name, d in deployed.items()}
    assert crons == {
        REFRESH: [("0 1 * * *", "Europe/Madrid")],
        SCORING: [("0 2 * * *", "Europe/Madrid")],
        RETRAIN: [("0 3 * * 0", "Europe/Madrid")],
        REPORT: [],
    }
    scoring = deployed[SCORING]
    assert scoring.global_concurrency_limit is not None and scoring.global_concurrency_limit.limit == 1
    assert scoring.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    # typed parameters become a form in the UI: the schema names the pydantic models
    schema = deployed[RETRAIN].parameter_openapi_schema
    assert {"data", "train", "thresholds"} <= set(schema["properties"])
    assert "TrainConfig" in str(schema)


def test_prefect_yaml_matches_python_definitions():
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    settings = ScheduleSettings()
    assert set(by_name) == {REFRESH, SCORING, RETRAIN, REPORT}
    assert by_name[SCORING]["schedules"][0]["cron"] == settings.scoring_cron == "0 2 * * *"
    assert by_name[REFRESH]["schedules"][0]["cron"] == settings.refresh_cron
    assert by_name[RETRAIN]["schedules"][0]["cron"] == settings.retrain_cron
    assert by_name[RETRAIN]["work_pool"]["name"] == settings.gpu_pool
    assert by_name[SCORING]["work_pool"]["name"] == settings.cpu_pool
    assert by_name[SCORING]["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    for d in spec["deployments"]:
        module, func = d["entrypoint"].split(":")
        source = (PREFECT_YAML.parent.parent / module).read_text()
        assert f"def {func}(" in source, d["entrypoint"]


@pytest.mark.parametrize("name", [REFRESH, SCORING, RETRAIN, REPORT])
def test_each_deployment_has_a_description(name):
    deployment = {d.name: d for d in build_deployments()}[name]
    assert deployment.description
