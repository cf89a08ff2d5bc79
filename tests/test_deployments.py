"""The shipped deployments: parameters from one configuration, schedules and pools from
settings, served and pool deployments under different names, and ``deployments/prefect.yaml``
generated from the same definitions (``tests/test_real_server.py`` deploys and runs them)."""

from __future__ import annotations

import asyncio

import pytest
import yaml

from cxrmodel.config import PipelineConfig, load_pipeline_config
from deployments.definitions import (
    NIGHTLY,
    PREFECT_YAML,
    REPORT,
    RETRAIN,
    SCORE,
    SERVED_SUFFIX,
    build_deployments,
    deployment_specs,
    prefect_yaml,
)
from deployments.settings import Settings, resolve_config


@pytest.fixture
def clean_env(monkeypatch):
    """No CXR_* variable from the caller's shell changes the defaults."""
    import os

    for name in [n for n in os.environ if n.startswith("CXR_")]:
        monkeypatch.delenv(name)


def _production_parameters() -> dict:
    cfg = load_pipeline_config(resolve_config())  # --config, else CXR_CONFIG, else the shipped demo
    return {
        "data": cfg.data.model_dump(mode="json"),
        "train": cfg.train.model_dump(mode="json"),
        "thresholds": cfg.thresholds.model_dump(mode="json"),
        "evaluation": cfg.evaluation.model_dump(mode="json"),
        "candidates": cfg.candidates.model_dump(mode="json"),
    }


def test_served_deployments_register_with_schedules_and_the_production_config(prefect_server, clean_env, monkeypatch):
    from prefect.client.orchestration import get_client

    monkeypatch.setenv("CXR_TIMEZONE", "Europe/Madrid")
    monkeypatch.setenv("CXR_CONFIG", "seed004")  # production names its recipe; unset, the shipped demo applies
    ids = {d.name: d.apply() for d in build_deployments()}
    assert set(ids) == {n + SERVED_SUFFIX for n in (NIGHTLY, RETRAIN, SCORE, REPORT)}

    async def read():
        async with get_client() as client:
            return {name.removesuffix(SERVED_SUFFIX): await client.read_deployment(i) for name, i in ids.items()}

    deployed = asyncio.run(read())
    crons = {name: [(s.schedule.cron, s.schedule.timezone) for s in d.schedules] for name, d in deployed.items()}
    assert crons == {NIGHTLY: [("0 1 * * *", "Europe/Madrid")], RETRAIN: [("0 3 * * 0", "Europe/Madrid")], SCORE: [], REPORT: []}
    for name in (NIGHTLY, RETRAIN, SCORE):
        assert deployed[name].global_concurrency_limit.limit == 1
        assert deployed[name].concurrency_options.collision_strategy.value == "CANCEL_NEW"
    # The weekly retrain trains exactly the production recipe, and the UI shows it as a form.
    assert deployed[RETRAIN].parameters == _production_parameters()
    assert deployed[RETRAIN].parameters["data"]["image_size"] == 224
    schema = deployed[RETRAIN].parameter_openapi_schema
    assert {"data", "train", "thresholds", "evaluation"} <= set(schema["properties"]) and "TrainConfig" in str(schema)
    assert deployed[NIGHTLY].parameters == {"data": _production_parameters()["data"]}
    assert {"source_dir", "incoming_dir"} <= set(deployed[NIGHTLY].parameter_openapi_schema["properties"])


def test_cxr_config_names_the_configuration(clean_env, monkeypatch, tmp_path):
    custom = PipelineConfig.model_validate({"data": {"image_size": 96}, "train": {"epochs": 2}})
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(custom.model_dump(mode="json")))
    monkeypatch.setenv("CXR_CONFIG", str(path))
    specs = {s.name: s for s in deployment_specs()}
    assert specs[RETRAIN].parameters["train"]["epochs"] == 2
    assert specs[NIGHTLY].parameters["data"]["image_size"] == 96
    monkeypatch.setenv("CXR_CONFIG", str(tmp_path / "seed004.yml"))  # a typo is an error, not the defaults
    with pytest.raises(FileNotFoundError, match="seed004.yml"):
        deployment_specs()


def test_committed_prefect_yaml_is_generated_from_the_definitions(clean_env):
    assert PREFECT_YAML.read_text() == prefect_yaml(), "run `cxr deployments yaml --out deployments/prefect.yaml`"
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert set(by_name) == {NIGHTLY, RETRAIN, SCORE, REPORT}
    settings = Settings()
    assert by_name[NIGHTLY]["schedules"] == [{"cron": settings.nightly_cron, "timezone": "UTC"}]
    assert by_name[RETRAIN]["work_pool"]["name"] == settings.gpu_pool
    assert by_name[NIGHTLY]["work_pool"]["name"] == settings.cpu_pool
    assert by_name[RETRAIN]["parameters"] == _production_parameters()
    for d in spec["deployments"]:
        module, func = d["entrypoint"].split(":")
        assert f"def {func}(" in (PREFECT_YAML.parent.parent / module).read_text(), d["entrypoint"]


@pytest.mark.parametrize("name", [NIGHTLY, RETRAIN, SCORE, REPORT])
def test_each_deployment_has_a_description(clean_env, name):
    assert {s.name: s for s in deployment_specs()}[name].description
