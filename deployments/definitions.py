"""The shipped deployments, defined once.

Two ways to run them, which never collide:

- ``cxr serve``: one long-running process registers them with the suffix ``-served``
  (``cxr-nightly/nightly-served``) and executes their scheduled runs itself. Stopping it pauses
  only those.
- ``prefect deploy --all --prefect-file deployments/prefect.yaml`` registers them under their
  plain names (``cxr-nightly/nightly``) on work pools, for workers (``prefect worker start``).
  ``deployments/prefect.yaml`` is generated from :func:`deployment_specs` by
  ``cxr deployments yaml`` (a test keeps the committed file equal to it).

Parameters come from one pipeline configuration (``CXR_CONFIG``, else the shipped ``demo``;
:func:`deployments.settings.resolve_config`): they are the deployment's parameters, so the UI's Run form shows
and edits them. Folders (``CXR_SOURCE_DIR``, ``CXR_INCOMING_DIR``) are not parameters: the
night reads them from the environment of the host that runs it. Schedules are in
``CXR_TIMEZONE``; pools in ``CXR_CPU_POOL`` / ``CXR_GPU_POOL``; ``CXR_DASK_ADDRESS`` sends the
night's scoring chunks to that Dask scheduler.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cxrmodel.config import PipelineConfig
from deployments.settings import Settings

NIGHTLY = "nightly"
RETRAIN = "weekly-retrain"
SCORE = "score-now"
REPORT = "render-report"
#: Suffix of the deployments ``cxr serve`` registers.
SERVED_SUFFIX = "-served"

PREFECT_YAML = Path(__file__).resolve().parent / "prefect.yaml"


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment, independent of how it is run."""

    name: str
    entrypoint: str  # "flows/nightly.py:nightly_flow", relative to the repository root
    description: str
    pool: str
    tags: tuple[str, ...]
    parameters: dict[str, Any] = field(default_factory=dict)
    cron: str | None = None
    one_at_a_time: bool = True

    def load_flow(self):
        """The Prefect flow object the entrypoint names."""
        path, name = self.entrypoint.split(":")
        return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


def deployment_specs(settings: Settings | None = None, config: PipelineConfig | None = None) -> list[DeploymentSpec]:
    """The four deployments with parameters from ``config`` (default: ``settings.config``)."""
    s = settings or Settings()
    cfg = config or s.pipeline_config()
    scoring = {"task_runner": "dask", "dask_address": s.dask_address} if s.dask_address else {}
    return [
        DeploymentSpec(
            NIGHTLY,
            "flows/nightly.py:nightly_flow",
            "Nightly: refresh the data (CXR_SOURCE_DIR) and register new studies (CXR_INCOMING_DIR), then score every "
            "pending study with the champion. A failed refresh still scores what is registered.",
            s.cpu_pool,
            ("cxr", "nightly"),
            {"data": cfg.data.model_dump(mode="json"), **scoring},
            s.nightly_cron,
        ),
        DeploymentSpec(
            RETRAIN,
            "flows/pipeline.py:retrain_flow",
            "Weekly on the GPU pool: train every candidate, calibrate them, rank them on validation (cross-validation "
            "when it is small), evaluate each on test once, promote the best if it beats the champion.",
            s.gpu_pool,
            ("cxr", "gpu"),
            {
                "data": cfg.data.model_dump(mode="json"),
                "train": cfg.train.model_dump(mode="json"),
                "thresholds": cfg.thresholds.model_dump(mode="json"),
                "evaluation": cfg.evaluation.model_dump(mode="json"),
                "candidates": cfg.candidates.model_dump(mode="json"),
            },
            s.retrain_cron,
        ),
        DeploymentSpec(
            SCORE,
            "flows/stages.py:score_flow",
            "On demand: score every pending study with the champion now.",
            s.cpu_pool,
            ("cxr",),
            dict(scoring),
        ),
        DeploymentSpec(
            REPORT,
            "flows/stages.py:report_flow",
            "On demand: render the HTML report of one evaluation (its id, or latest).",
            s.cpu_pool,
            ("cxr",),
            {"evaluation_id": "latest"},
            one_at_a_time=False,
        ),
    ]


def _schedules(spec: DeploymentSpec, timezone: str) -> list:
    from prefect.client.schemas.schedules import CronSchedule

    return [CronSchedule(cron=spec.cron, timezone=timezone)] if spec.cron else []


def build_deployments(settings: Settings | None = None, config: PipelineConfig | None = None) -> list:
    """The deployments ``cxr serve`` runs, as Prefect ``RunnerDeployment`` objects named
    ``<name>-served``."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    s = settings or Settings()
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    return [
        spec.load_flow().to_deployment(
            spec.name + SERVED_SUFFIX,
            schedules=_schedules(spec, s.timezone),
            parameters=spec.parameters,
            concurrency_limit=one_at_a_time if spec.one_at_a_time else None,
            tags=list(spec.tags),
            description=spec.description,
        )
        for spec in deployment_specs(s, config)
    ]


PREFECT_YAML_HEADER = """\
# Generated by `cxr deployments yaml` from deployments/definitions.py: edit that, not this file.
# From the repository root, with the pools created once
# (`prefect work-pool create cxr-cpu --type process`, and `cxr-gpu` on the GPU host):
#   CXR_REPO_DIR=$PWD prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml
# then start workers: `prefect worker start --pool cxr-cpu` (and `--pool cxr-gpu`). A worker's
# flow runs read CXR_HOME, CXR_DATABASE_URL, CXR_SOURCE_DIR and CXR_INCOMING_DIR from its environment.
"""


def prefect_yaml(settings: Settings | None = None, config: PipelineConfig | None = None) -> str:
    """``deployments/prefect.yaml`` for ``prefect deploy --all``: the same specs, on work pools."""
    s = settings or Settings()
    deployments = []
    for spec in deployment_specs(s, config):
        entry: dict[str, Any] = {
            "name": spec.name,
            "entrypoint": spec.entrypoint,
            "description": spec.description,
            "tags": list(spec.tags),
            "parameters": spec.parameters,
            "schedules": [{"cron": spec.cron, "timezone": s.timezone}] if spec.cron else [],
            "work_pool": {"name": spec.pool},
        }
        if spec.one_at_a_time:
            entry["concurrency_limit"] = {"limit": 1, "collision_strategy": "CANCEL_NEW"}
        deployments.append(entry)
    document = {
        "name": "cxr-pipeline",
        "prefect-version": "3.8.8",
        "build": None,
        "push": None,
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $CXR_REPO_DIR }}"}}],
        "deployments": deployments,
    }
    return PREFECT_YAML_HEADER + yaml.safe_dump(document, sort_keys=False, width=120)


def serve_all(settings: Settings | None = None, config: PipelineConfig | None = None) -> None:  # pragma: no cover
    """Run the ``-served`` deployments in this process (``cxr serve``) until interrupted."""
    from prefect import serve

    serve(*build_deployments(settings, config))
