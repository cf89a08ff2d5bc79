"""Where the flows find their state: the ``home`` and ``database_url`` parameters a flow was
given (the command line always gives both), each unset one from the ``CXR_*`` settings of the
process that runs it (a deployment's worker)."""

from __future__ import annotations

from pathlib import Path

from cxrmodel.threads import use_torch_threads
from deployments.settings import Settings, workspace


def apply_torch_threads(settings: Settings | None = None) -> int:
    """Give torch in this process ``CXR_TORCH_THREADS`` threads, by default its share of the
    cores (:attr:`Settings.resolved_torch_threads`, issue 24)."""
    return use_torch_threads((settings or Settings()).resolved_torch_threads)


def resolve(home: str | None = None, database_url: str | None = None) -> tuple[Path, str]:
    """(home folder, database URL): :func:`deployments.settings.workspace` as a pair. Every flow
    starts here, wherever it runs (``cxr``, a worker's flow run, ``cxr serve``), so this is also
    where its process gets its torch threads (:func:`apply_torch_threads`)."""
    ws = workspace(home, database_url)
    apply_torch_threads(Settings(**({"home": ws.home} if home else {})))
    return ws.home, ws.database_url
