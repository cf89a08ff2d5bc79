"""Where the flows find their state. Resolved from ``CXR_*`` settings unless given."""

from __future__ import annotations

from pathlib import Path

from cxrmodel.config import Settings


def resolve(home: str | None = None, database_url: str | None = None) -> tuple[Path, str]:
    """(home folder, database URL) from explicit values or the ``CXR_*`` environment."""
    settings = Settings(**({"home": Path(home)} if home else {}))
    home_path = settings.resolved_home
    home_path.mkdir(parents=True, exist_ok=True)
    return home_path, database_url or settings.resolved_database_url
