"""Where the flows find their state. Resolved from ``CXR_*`` settings unless given."""

from __future__ import annotations

from pathlib import Path

from cxrmodel.config import Settings
from cxrmodel.threads import use_torch_threads


def apply_torch_threads(settings: Settings | None = None) -> int:
    """Give torch in this process (and the processes it starts) ``CXR_TORCH_THREADS`` threads,
    by default its share of the cores (:attr:`Settings.resolved_torch_threads`, issue 24)."""
    return use_torch_threads((settings or Settings()).resolved_torch_threads)


def resolve(home: str | None = None, database_url: str | None = None) -> tuple[Path, str]:
    """(home folder, database URL) from explicit values or the ``CXR_*`` environment. Every flow
    starts here, wherever it runs (``cxr``, a worker's flow run, ``cxr serve``), so this is also
    where its process gets its torch threads (:func:`apply_torch_threads`)."""
    settings = Settings(**({"home": Path(home)} if home else {}))
    apply_torch_threads(settings)
    home_path = settings.resolved_home
    home_path.mkdir(parents=True, exist_ok=True)
    return home_path, database_url or settings.resolved_database_url
