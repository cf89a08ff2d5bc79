"""The pipeline's deployments, defined once in Python and used by ``cxr serve`` (a long-running
process that executes scheduled runs itself) and mirrored by ``deployments/prefect.yaml``
(``prefect deploy --all``, for workers on work pools).

- nightly data refresh (default 01:00), then nightly scoring (default 02:00, ``0 2 * * *``),
  at most one scoring run at a time (a new one is cancelled while another runs);
- weekly retraining + calibration + evaluation on the GPU work pool (Sunday 03:00);
- on-demand report rendering (no schedule).

Times are in ``CXR_TIMEZONE`` (default UTC); pools in ``CXR_CPU_POOL`` / ``CXR_GPU_POOL``;
``CXR_DASK_ADDRESS`` sends the nightly scoring's chunks to that Dask scheduler.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ScheduleSettings(BaseSettings):
    """Schedules and pools, from ``CXR_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="CXR_", extra="ignore")

    timezone: str = "UTC"
    refresh_cron: str = "0 1 * * *"
    scoring_cron: str = "0 2 * * *"
    retrain_cron: str = "0 3 * * 0"
    cpu_pool: str = "cxr-cpu"
    gpu_pool: str = "cxr-gpu"
    source_dir: str = Field("/data/nih", description="Folder the nightly refresh reads.")
    incoming_dir: str | None = Field("/data/incoming", description="Folder of new studies to register.")
    dask_address: str | None = Field(
        None, description="Scheduler of a Dask cluster (tcp://host:8786) for nightly scoring; unset: score in the flow's process."
    )


REFRESH = "nightly-refresh"
SCORING = "nightly-scoring"
RETRAIN = "weekly-retrain"
REPORT = "render-report"


def build_deployments(settings: ScheduleSettings | None = None) -> list:
    """The four deployments as Prefect ``RunnerDeployment`` objects (for ``serve`` or ``apply``)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule

    from flows.pipeline import retrain_flow
    from flows.stages import refresh_flow, report_flow, score_flow

    s = settings or ScheduleSettings()
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    return [
        refresh_flow.to_deployment(
            REFRESH,
            schedules=[CronSchedule(cron=s.refresh_cron, timezone=s.timezone)],
            parameters={"source_dir": s.source_dir, "source": "nih-local", "incoming_dir": s.incoming_dir},
            concurrency_limit=one_at_a_time,
            tags=["cxr", "nightly"],
            description="Nightly: register new studies and refresh labelled data.",
        ),
        score_flow.to_deployment(
            SCORING,
            schedules=[CronSchedule(cron=s.scoring_cron, timezone=s.timezone)],
            parameters={"task_runner": "dask", "dask_address": s.dask_address} if s.dask_address else {},
            concurrency_limit=one_at_a_time,
            tags=["cxr", "nightly"],
            description="Nightly: score every study without a prediction from the champion.",
        ),
        retrain_flow.to_deployment(
            RETRAIN,
            schedules=[CronSchedule(cron=s.retrain_cron, timezone=s.timezone)],
            concurrency_limit=one_at_a_time,
            tags=["cxr", "gpu"],
            description="Weekly on the GPU pool: train, calibrate, evaluate, promote if better.",
        ),
        report_flow.to_deployment(REPORT, tags=["cxr"], description="On demand: render an evaluation report."),
    ]


def serve_all(settings: ScheduleSettings | None = None) -> None:  # pragma: no cover - blocks forever
    """Run the deployments in this process (``cxr serve``)."""
    from prefect import serve

    serve(*build_deployments(settings))
