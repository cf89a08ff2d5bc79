"""Where the system keeps its state and when it runs: ``Settings`` (``CXR_*`` environment
variables) and ``HomeLayout`` (the one place the folders under the home are named).

What to do (the pipeline's recipes) is :mod:`cxrmodel.config`, which re-exports both names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from cxrmodel.config import PipelineConfig

#: The repository's configuration folder (``configs/``), beside the installed packages.
CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
#: The production recipe the shipped deployments run unless ``CXR_CONFIG`` names another.
DEFAULT_CONFIG = CONFIGS_DIR / "seed004.yaml"


@dataclass(frozen=True)
class HomeLayout:
    """The one place that names the folders under a home (``CXR_HOME``): every task and flow
    builds its paths from here."""

    home: Path

    @property
    def models(self) -> Path:
        """Model versions' artefacts, one folder per version name."""
        return self.home / "models"

    @property
    def reports(self) -> Path:
        """HTML reports and bundles (what ``cxr reports serve`` serves)."""
        return self.home / "reports"

    @property
    def cache(self) -> Path:
        """The resized image cache, one folder per image size."""
        return self.home / "cache"

    @property
    def synthetic_data(self) -> Path:
        """Where ``cxr demo`` writes its synthetic dataset."""
        return self.home / "data" / "synthetic"

    def model_dir(self, name: str) -> Path:
        """``models/<name>``, created: one model version's folder."""
        path = self.models / name
        path.mkdir(parents=True, exist_ok=True)
        return path


class Settings(BaseSettings):
    """Where the system keeps its state and when it runs. Every field maps to a ``CXR_<NAME>``
    environment variable (``CXR_HOME``, ``CXR_DATABASE_URL``, ``CXR_SOURCE_DIR``, ...)."""

    model_config = SettingsConfigDict(env_prefix="CXR_", extra="ignore")

    home: Path = Field(default=Path(".cxr"), description="Root folder for data, artefacts and reports.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; defaults to sqlite:///<home>/cxr.db")
    config: Path = Field(DEFAULT_CONFIG, description="Pipeline YAML the deployments run (data, train, thresholds, evaluation).")
    # The nightly run's inputs: folders on the host that runs it (a worker reads its own environment).
    source_dir: Path | None = Field(
        None, description="NIH-layout folder the nightly refresh reads (Data_Entry_2017*.csv, images/)."
    )
    source: Literal["nih-local", "synthetic"] = Field("nih-local", description="How the nightly refresh reads source_dir.")
    incoming_dir: Path | None = Field(None, description="Folder of new PNG/DICOM studies the nightly run registers and scores.")
    # Schedules (cron, in ``timezone``) and work pools of the shipped deployments.
    timezone: str = "UTC"
    nightly_cron: str = Field("0 1 * * *", description="The night: refresh, then score what is registered.")
    retrain_cron: str = Field("0 3 * * 0", description="Weekly: train, calibrate, evaluate, promote.")
    cpu_pool: str = "cxr-cpu"
    gpu_pool: str = "cxr-gpu"
    dask_address: str | None = Field(
        None, description="Scheduler of a Dask cluster (tcp://host:8786) for nightly scoring; unset: score in the flow's process."
    )
    # The read-only report server (``cxr reports serve``) and the address the UI's links use.
    reports_host: str = "127.0.0.1"
    reports_port: int = Field(8000, ge=1, le=65535)
    reports_base_url: str | None = Field(
        None,
        description="Public URL of the reports folder, e.g. https://cxr.example.org/reports; default http://<host>:<port>/reports.",
    )

    # The on-demand scoring service (``cxr api``).
    api_host: str = "127.0.0.1"
    api_port: int = Field(8080, ge=1, le=65535)
    api_workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes (each loads the champion once).")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accepted X-API-Key values (CXR_API_KEYS='[\"k1\", \"k2\"]' or 'k1,k2'); none: every call but the health checks is refused.",
        repr=False,
    )
    api_max_upload_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Largest request body accepted by POST /v1/score.")
    api_max_pixels: int = Field(
        50_000_000, ge=32 * 32, description="Largest image (width x height) decoded; checked from the header before decoding."
    )
    api_cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS; empty: CORS off."
    )
    api_batch_wait_ms: float = Field(5.0, ge=0, le=1000, description="How long the micro-batcher waits for more requests.")
    api_batch_size: int = Field(8, ge=1, le=256, description="Most images the micro-batcher gives the model at once.")
    api_champion_ttl_s: float = Field(2.0, ge=0, description="How often the registry is asked whether the champion changed.")
    api_public_reports: bool = Field(False, description="Serve /reports/ without an API key (a trusted network only).")

    @field_validator("api_keys", "api_cors_origins", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        """A JSON list, or comma-separated values."""
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_home / 'cxr.db'}"

    @property
    def layout(self) -> HomeLayout:
        return HomeLayout(self.resolved_home)

    @property
    def models_dir(self) -> Path:
        return self.layout.models

    @property
    def reports_dir(self) -> Path:
        return self.layout.reports

    @property
    def cache_dir(self) -> Path:
        return self.layout.cache

    @property
    def public_reports_url(self) -> str:
        """Base URL under which ``reports_dir`` is served, without a trailing slash."""
        return (self.reports_base_url or f"http://{self.reports_host}:{self.reports_port}/reports").rstrip("/")

    def pipeline_config(self) -> PipelineConfig:
        """The validated pipeline configuration named by ``config`` (a missing file is an error)."""
        from cxrmodel.config import load_pipeline_config

        return load_pipeline_config(self.config)

    # --- threads (issue 24)
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="Intra-op torch threads of every process that runs a model (CLI, flows, workers, API, Dask workers, "
        "DDP ranks); unset: the cores divided by torch_processes, at least 1.",
    )
    torch_processes: int = Field(
        2,
        ge=1,
        description="How many torch processes share one host's cores (flow runs a worker runs at once, the API beside "
        "a night); sets the default of torch_threads. bench/contention.py measures the choice.",
    )

    @property
    def resolved_torch_threads(self) -> int:
        """``torch_threads``, else this host's cores divided by ``torch_processes`` (at least 1)."""
        from cxrmodel.threads import share_of_cores

        return self.torch_threads or share_of_cores(self.torch_processes)
