"""The database as the service sees it: an outage is a JSON 503 with ``Retry-After`` and one log
line, not a traceback per request.

:func:`is_unavailable` tells a lost or refused connection (``OperationalError``,
``InterfaceError``, an invalidated connection) from a bug. :class:`DatabaseState` logs the
first failure of an outage and the recovery, each once; the champion watcher and ``/readyz``
report to it, so recovery is noticed within a registry check even with no traffic. Nothing
here logs a URL: only the driver's error type and the first line of its message.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

log = logging.getLogger("cxr.api")


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot be reached now (rather than a wrong query)."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def describe(exc: BaseException) -> str:
    """``TypeName: first line of the driver's message`` (at most 200 characters)."""
    cause = getattr(exc, "orig", None) or exc
    first = (str(cause).strip().splitlines() or [""])[0]
    return f"{type(cause).__name__}: {first[:200]}"


class DatabaseState:
    """Up or down, with the time the outage began; logs each transition once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self.reason: str | None = None

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            if self._down_since is None:
                self._down_since, self.reason = time.monotonic(), describe(exc)
                log.error("database unavailable (%s): answering 503 database_unavailable until it is back", self.reason)

    def ok(self) -> None:
        with self._lock:
            if self._down_since is not None:
                log.warning("database available again after %.1f s", time.monotonic() - self._down_since)
                self._down_since, self.reason = None, None
