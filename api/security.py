"""API keys, study keys from requests, and the response headers of every answer.

API keys come from settings (``CXR_API_KEYS``) and arrive in the ``X-API-Key`` header. The
given key is compared with every configured key with :func:`hmac.compare_digest` (constant
time, and no early exit on the first match), so neither timing nor order says which key or
how much of one matched. Keys are never logged or echoed.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence

from fastapi import Request, Security
from fastapi.security import APIKeyHeader
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import Refusal, refusal_response

API_KEY_HEADER = "X-API-Key"
api_key_scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="One of the keys in CXR_API_KEYS.")

#: What a study key from a request may look like: NIH image names (``00000001_000.png``),
#: upload keys (``sha256-<hex>``), incoming file names; no path separators, no markup.
STUDY_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_STUDY_KEY = re.compile(STUDY_KEY_PATTERN)

#: The page's scripts and styles come from this server; images are data URIs (heat maps).
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def key_matches(given: str | None, keys: Sequence[str]) -> bool:
    """Whether ``given`` equals one of ``keys``, compared in constant time."""
    if not given or not keys:
        return False
    candidate = given.encode("utf-8", "surrogatepass")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key.encode("utf-8", "surrogatepass"))
    return matched


def _refuse_key(given: str | None, keys: Sequence[str]) -> Refusal | None:
    if not keys:
        return Refusal(401, "unauthorised", "no API keys are configured on this server (set CXR_API_KEYS)")
    if not given:
        return Refusal(401, "unauthorised", f"missing API key: send it in the {API_KEY_HEADER} header")
    if not key_matches(given, keys):
        return Refusal(401, "unauthorised", "invalid API key")
    return None


def require_api_key(request: Request, given: str | None = Security(api_key_scheme)) -> None:
    """FastAPI dependency: refuse the request unless its ``X-API-Key`` is a configured key."""
    refusal = _refuse_key(given, request.app.state.settings.api_keys)
    if refusal is not None:
        raise refusal


class KeyedApp:
    """An ASGI app (the reports' static files) behind the same API key check."""

    def __init__(self, app: ASGIApp, keys: Sequence[str]) -> None:
        self.app, self.keys = app, list(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers", [])).get(API_KEY_HEADER.lower().encode())
            refusal = _refuse_key(given.decode("latin-1") if given else None, self.keys)
            if refusal is not None:
                await refusal.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def valid_study_key(study_key: str) -> str:
    """``study_key`` if it matches :data:`STUDY_KEY_PATTERN`, else a 422 refusal (the key
    itself is not echoed)."""
    if not _STUDY_KEY.fullmatch(study_key):
        raise Refusal(422, "invalid_study_key", f"a study key is 1-128 letters, digits, '.', '_' or '-' ({STUDY_KEY_PATTERN})")
    return study_key


class SecurityHeaders:
    """ASGI middleware: ``nosniff``, no referrer, no caching of answers, and a strict CSP (the
    reports' own, without scripts, under ``/reports``)."""

    def __init__(self, app: ASGIApp, reports_csp: str) -> None:
        self.app, self.reports_csp = app, reports_csp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = self.reports_csp if scope["path"].startswith("/reports") else PAGE_CSP
        extra = {
            b"content-security-policy": csp.encode(),
            b"x-content-type-options": b"nosniff",
            b"referrer-policy": b"no-referrer",
            b"cache-control": b"no-store",
            b"x-frame-options": b"DENY",
        }

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in extra]
                message = {**message, "headers": headers + list(extra.items())}
            await send(message)

        await self.app(scope, receive, send_with_headers)


__all__ = [
    "API_KEY_HEADER",
    "KeyedApp",
    "SecurityHeaders",
    "api_key_scheme",
    "key_matches",
    "refusal_response",
    "require_api_key",
    "valid_study_key",
]
