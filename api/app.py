"""The FastAPI application of ``cxr api``: :func:`create_app`.

Routes: ``POST /v1/score``, ``GET /v1/studies/{study_key}/predictions``, ``GET /v1/models``,
``GET /v1/models/champion``, ``GET /reports/...`` (the reports folder, read-only), ``GET
/openapi.json``, ``/healthz`` and ``/readyz`` (no key), and the page at ``/``. The champion
is loaded at start-up (the service starts without one and reports not ready), the
micro-batcher's worker runs for the life of the process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from api.batcher import MicroBatcher
from api.champion import ChampionHolder, NoChampion
from api.database import DatabaseState, is_unavailable
from api.decoding import DecodeBudget
from api.errors import install_error_handlers
from api.routes import router
from api.schemas import Health
from api.security import KeyedApp, SecurityHeaders, require_api_key
from api.uploads import BodyLimit
from cxrmodel.findings import FINDINGS
from cxrmodel.threads import configure_threads
from db.engine import ping
from deployments.settings import Settings
from reports.server import REPORT_CSP, reports_files

HERE = Path(__file__).parent
VERSION = "1.0.0"
log = logging.getLogger("cxr.api")

DESCRIPTION = """On-demand scoring of one chest radiograph with the nightly pipeline's champion model, its active
thresholds and its database. **Research tool, not a medical device.**

Every endpoint but `/healthz` and `/readyz` needs an `X-API-Key` header with one of the keys in
`CXR_API_KEYS`. Refusals are JSON `{"error": ..., "reason": ...}` with a 4xx status.

```bash
curl -H "X-API-Key: $KEY" -F image=@study.png -F age=62 -F sex=F -F view=PA http://127.0.0.1:8080/v1/score
```
"""


def _templates() -> Environment:
    return Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(("html", "j2")))


def _log_to_stderr() -> None:
    """The service's own log lines (champion loaded or swapped) beside uvicorn's; never a key."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def create_app(settings: Settings | None = None, *, torch_threads: int | None = None) -> FastAPI:
    """The service for ``settings`` (default: the ``CXR_*`` environment). Torch runs on
    ``torch_threads`` threads, by default ``CXR_TORCH_THREADS``, else its live share of the host's
    cores, so a night beside the service does not make both spin (issue 24)."""
    settings = settings or Settings()
    _log_to_stderr()
    database_url = settings.resolved_database_url

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_threads(torch_threads or settings.torch_threads, settings.torch_share_dir)
        app.state.batcher.start()
        await app.state.champions.start()
        try:
            await app.state.champions.current()
            log.info("serving champion %s", app.state.champions.loaded.name)
        except NoChampion as exc:
            log.warning("no champion yet (%s): /readyz answers 503 until there is one", exc)
        if not settings.api_keys:
            log.warning("no API keys configured (CXR_API_KEYS): every call but /healthz and /readyz is refused")
        yield
        await app.state.champions.stop()
        await app.state.batcher.stop()

    app = FastAPI(
        title="cxr on-demand scoring",
        version=VERSION,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.database_url = database_url
    app.state.uploads_dir = settings.resolved_home / "uploads"
    app.state.database = database = DatabaseState()
    app.state.champions = ChampionHolder(
        database_url,
        settings.api_champion_ttl_s,
        settings.api_champion_retry_s,
        settings.api_champion_retry_max_s,
        on_database_error=database.failed,
        on_database_ok=database.ok,
    )
    app.state.batcher = MicroBatcher(settings.api_batch_size, settings.api_batch_wait_ms / 1000.0)
    app.state.decode_budget = DecodeBudget(settings.api_decode_budget_bytes, settings.api_retry_after_s)
    install_error_handlers(app, database, settings.api_retry_after_s)
    app.include_router(router)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_api_key)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/healthz", response_model=Health, tags=["health"], summary="The process is up")
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["health"], responses={503: {"model": Health}}, summary="Ready to score")
    async def readyz() -> JSONResponse:
        """Ready (200) when the database answers and a champion is loaded; ``degraded`` (still 200)
        when the registry names a newer champion this process refused to load (the version and
        the reason in ``checks.champion_refused``); 503 otherwise."""
        checks, ready = {}, True
        try:
            await asyncio.to_thread(ping, database_url)
            checks["database"] = "ok"
            database.ok()
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            checks["database"], ready = f"unavailable: {type(exc).__name__}", False
            if is_unavailable(exc):
                database.failed(exc)
        champions = app.state.champions
        try:
            checks["champion"] = (await champions.current()).name
        except NoChampion as exc:
            checks["champion"], ready = str(exc), False
        refused = champions.refused
        if refused is not None:
            due = max(0.0, refused.next_try - time.monotonic())
            checks["champion_refused"] = (
                f"version {refused.version_id}: {refused.reason} (tried {refused.tries} times; next try in {due:.0f} s)"
            )
        status = "not_ready" if not ready else "degraded" if refused is not None else "ok"
        headers = {"Retry-After": str(settings.api_retry_after_s)} if not ready else None
        body = Health(status=status, checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503, headers=headers)

    templates = _templates()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(request: Request) -> HTMLResponse:
        """The upload page: a static form; its script calls /v1/score with the key typed in."""
        html = templates.get_template("index.html.j2").render(
            findings=FINDINGS, max_upload_mb=settings.api_max_upload_bytes / 2**20, version=VERSION
        )
        return HTMLResponse(html)

    app.mount("/static", StaticFiles(directory=HERE / "static", follow_symlink=False), name="static")
    reports = reports_files(settings.reports_dir)
    app.mount("/reports", reports if settings.api_public_reports else KeyedApp(reports, settings.api_keys), name="reports")

    app.add_middleware(BodyLimit, limit=settings.api_max_upload_bytes)
    if settings.api_cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.api_cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "Content-Type"],
        )
    app.add_middleware(SecurityHeaders, reports_csp=REPORT_CSP)
    return app


def serve(
    settings: Settings, host: str | None = None, port: int | None = None, workers: int | None = None
) -> None:  # pragma: no cover
    """Run the service under uvicorn until interrupted (each worker process loads the champion
    once). One worker serves the app built from ``settings`` here; several workers are separate
    processes that build their own from the environment, so ``settings``' home and database
    are handed to them there (the one place the service writes the environment)."""
    import os

    import uvicorn

    workers = workers or settings.api_workers
    if workers > 1:
        os.environ.update(CXR_HOME=str(settings.resolved_home), CXR_DATABASE_URL=settings.resolved_database_url)
    uvicorn.run(
        "api.app:app_from_environment" if workers > 1 else create_app(settings),
        factory=workers > 1,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers,
        log_level="info",
        server_header=False,
        proxy_headers=True,
    )


def app_from_environment() -> FastAPI:
    """uvicorn's factory: the app of the ``CXR_*`` environment (each worker builds its own)."""
    return create_app(Settings())
