"""A read-only HTTP server for the reports folder, so that a browser (and the Prefect UI's link
artifacts) can open the reports: ``cxr reports serve``.

It serves the files under one folder and nothing else: Starlette's ``StaticFiles`` resolves
every request inside that folder (``..`` and symlinks out of it are refused), answers only GET
and HEAD, and lists no directories. Responses carry a strict Content-Security-Policy: the
reports are self-contained HTML (inline CSS, images as data URIs, no scripts).
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: What a report may load: its own inline styles and data-URI images; no scripts, no frames.
REPORT_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": REPORT_CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.decode().lower() not in SECURITY_HEADERS]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def reports_files(reports_dir: str | Path) -> StaticFiles:
    """The ASGI app serving the files under ``reports_dir`` (created if missing)."""
    root = Path(reports_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return StaticFiles(directory=root, html=False, follow_symlink=False)


def create_report_app(reports_dir: str | Path) -> Starlette:
    """``/reports/<file>`` from ``reports_dir``, ``/healthz``, and a one-line ``/``."""

    async def healthz(_request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def root(_request) -> PlainTextResponse:
        return PlainTextResponse("cxr reports: open a report's link from the Prefect UI (/reports/<file>.html)")

    return Starlette(
        routes=[Route("/", root), Route("/healthz", healthz), Mount("/reports", app=reports_files(reports_dir), name="reports")],
        middleware=[Middleware(SecurityHeaders)],
    )


def serve_reports(reports_dir: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:  # pragma: no cover - blocks
    """Serve ``reports_dir`` under ``http://host:port/reports/`` until interrupted."""
    import uvicorn

    uvicorn.run(create_report_app(reports_dir), host=host, port=port, log_level="info", server_header=False)
