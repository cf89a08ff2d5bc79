"""Where the flows find their state: the ``home`` and ``database_url`` parameters a flow was
given (the command line always gives both), each unset one from the ``CXR_*`` settings of the
process that runs it (a deployment's worker)."""

from __future__ import annotations

from pathlib import Path

from deployments.settings import Settings, workspace


def resolve(home: str | None = None, database_url: str | None = None) -> tuple[Path, str]:
    """(home folder, database URL): :func:`deployments.settings.workspace` as a pair. Every flow
    starts here, wherever it runs (``cxr``, a worker's flow run, ``cxr serve``), so this is also
    where its process takes its torch threads (:meth:`Settings.apply_torch_threads`)."""
    ws = workspace(home, database_url)
    Settings().apply_torch_threads()
    return ws.home, ws.database_url
