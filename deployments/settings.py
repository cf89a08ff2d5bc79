"""Operations settings: where the system keeps its state and when it runs (``Settings``, the
``CXR_*`` environment variables), the workspace a command works in (``Workspace``), and which
pipeline configuration applies (:func:`resolve_config`).

They live beside the deployments, not in :mod:`cxrmodel`: the ML library takes what it needs
as arguments and never reads the environment. This module imports nothing heavy (pydantic
alone), so the HTTP service and the command line read it cheaply.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cxrmodel.layout import HomeLayout

if TYPE_CHECKING:
    from cxrmodel.config import PipelineConfig


class Settings(BaseSettings):
    """Where the system keeps its state and when it runs. Every field maps to a ``CXR_<NAME>``
    environment variable (``CXR_HOME``, ``CXR_DATABASE_URL``, ``CXR_SOURCE_DIR``, ...)."""

    model_config = SettingsConfigDict(env_prefix="CXR_", extra="ignore")

    home: Path = Field(default=Path(".cxr"), description="Root folder for data, artefacts and reports.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; defaults to sqlite:///<home>/cxr.db")
    config: str | None = Field(
        None,
        description="Pipeline configuration (a YAML path or a shipped name: demo, seed004, small-real); unset: demo.",
    )
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

    # --- reliability (issue 22)
    api_champion_retry_s: float = Field(
        5.0,
        gt=0,
        description="After a champion fails to load (integrity, file), first retry in this many seconds; doubles per try.",
    )
    api_champion_retry_max_s: float = Field(300.0, gt=0, description="Longest wait between two tries to load a refused champion.")
    api_retry_after_s: int = Field(
        5, ge=1, le=3600, description="Retry-After of a 503 (database unavailable, decode budget full)."
    )
    api_decode_budget_bytes: int = Field(
        1536 * 1024 * 1024,
        ge=16 * 1024 * 1024,
        description="Memory the decodes in flight may need together (estimated from each header); over it: 503.",
    )
    scoring_db_retry_s: float = Field(
        240.0, ge=0, description="How long a scoring task keeps retrying a lost database connection (with back-off)."
    )

    # --- threads (issue 24)
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="Intra-op torch threads of every process that runs a model (CLI, flows, workers, API, Dask workers, "
        "DDP ranks); unset: the torch processes of this host share its cores, re-balanced between batches.",
    )
    torch_share_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "cxr-torch-share",
        description="Where the torch processes of this host count each other (one folder per host; see cxrmodel.threads).",
    )

    def apply_torch_threads(self) -> int:
        """This process's torch threads from now on: ``torch_threads``, else its live share of the
        host's cores (:func:`cxrmodel.threads.configure_threads`); the entry points call this."""
        from cxrmodel.threads import configure_threads

        return configure_threads(self.torch_threads, self.torch_share_dir)

    # --- PACS (issue 23)
    dicomweb_url: str | None = Field(
        None,
        description="DICOMweb root of the PACS (e.g. http://pacs:8042/dicom-web); set: the night pulls from it and writes back.",
    )
    dicomweb_user: str | None = Field(None, description="PACS user (HTTP basic auth).")
    dicomweb_password: SecretStr | None = Field(None, description="PACS password (never logged).", repr=False)
    dicomweb_secret: str | None = Field(
        None, description='Prefect Secret block holding {"user": ..., "password": ...} (instead of USER/PASSWORD).'
    )
    dicomweb_verify: str = Field("true", description="TLS verification: true, false, or the path of a CA bundle.")
    dicomweb_writeback: bool = Field(True, description="Write each scored PACS study's SR back to the PACS.")
    dicomweb_heatmap: bool = Field(False, description="Also write a Grad-CAM secondary capture in the report series.")
    dicomweb_modalities: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["CR", "DX"], description="Modalities the pull searches for (CR,DX)."
    )
    dicomweb_overlap_hours: float = Field(48.0, ge=0, description="How far before the cursor each search starts.")
    dicomweb_max_pixels: int = Field(40_000_000, ge=32 * 32, description="Largest instance pulled (rows x columns x frames).")
    dicomweb_timeout_s: float = Field(30.0, gt=0, description="Seconds a DICOMweb request may take.")
    dicomweb_max_attempts: int = Field(5, ge=1, description="Tries before an object the PACS refuses is given up.")

    @field_validator("dicomweb_modalities", mode="before")
    @classmethod
    def _modalities(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().upper() for part in value.split(",") if part.strip()]
        return value

    @property
    def dicomweb_tls_verify(self) -> bool | str:
        """``dicomweb_verify`` as requests takes it: a bool, or a CA bundle path."""
        flag = self.dicomweb_verify.strip().lower()
        if flag in ("true", "1", "yes", "on", ""):
            return True
        if flag in ("false", "0", "no", "off"):
            return False
        return self.dicomweb_verify

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

    @property
    def workspace(self) -> Workspace:
        """The home folder and database URL these settings name."""
        return Workspace(self.resolved_home, self.resolved_database_url)

    def pipeline_config(self) -> PipelineConfig:
        """The validated pipeline configuration that applies (:func:`resolve_config`)."""
        from cxrmodel.config import load_pipeline_config

        return load_pipeline_config(resolve_config(None, self))


@dataclass(frozen=True)
class Workspace:
    """Where one command works: its home folder and its database. The command line resolves it
    once (``--home``, else ``CXR_HOME``) and passes it to the flows as parameters; nothing is
    written to the environment."""

    home: Path
    database_url: str

    @property
    def layout(self) -> HomeLayout:
        return HomeLayout(self.home)

    def flow_parameters(self) -> dict[str, str]:
        """``home`` and ``database_url`` as the flows take them (plain strings)."""
        return {"home": str(self.home), "database_url": self.database_url}


def workspace(home: str | Path | None = None, database_url: str | None = None) -> Workspace:
    """The workspace from explicit values, each unset one from the ``CXR_*`` settings; the home
    folder is created."""
    settings = Settings(**({"home": Path(home)} if home else {}))
    ws = Workspace(settings.resolved_home, database_url or settings.resolved_database_url)
    ws.home.mkdir(parents=True, exist_ok=True)
    return ws


def resolve_config(given: str | Path | None = None, settings: Settings | None = None) -> Path:
    """The one rule for which pipeline configuration applies: ``given`` (``--config``), else
    ``CXR_CONFIG``, else the shipped :data:`configs.DEFAULT`. A value names a file, or a shipped
    configuration by name (``small-real``), or by its checkout path (``configs/small-real.yaml``,
    which also works outside the checkout). Anything else is a
    :class:`~cxrmodel.io.MissingInputError` naming it."""
    import configs
    from cxrmodel.io import MissingInputError

    value = given if given is not None else (settings or Settings()).config
    if value is None or str(value) == "":
        value = configs.DEFAULT
    path = Path(value).expanduser()
    if path.is_file():
        return path
    if path.parent in (Path("."), Path("configs")) and (shipped := configs.shipped(path.name)) is not None:
        return shipped
    raise MissingInputError(f"configuration file not found: {value} (a YAML file, or one of {', '.join(configs.names())})")
