"""Where the flows find their state: the ``home`` and ``database_url`` parameters a flow was
given (the command line always gives both), each unset one from the ``CXR_*`` settings of the
process that runs it (a deployment's worker)."""

from __future__ import annotations

from pathlib import Path

from deployments.settings import workspace


def resolve(home: str | None = None, database_url: str | None = None) -> tuple[Path, str]:
    """(home folder, database URL): :func:`deployments.settings.workspace` as a pair."""
    ws = workspace(home, database_url)
    return ws.home, ws.database_url
