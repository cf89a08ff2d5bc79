"""The folders under a home (``CXR_HOME``): named in one place, so every task and flow builds
its paths the same way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HomeLayout:
    """The one place that names the folders under a home (``CXR_HOME``): every task and flow
    builds its paths from here."""

    home: Path

    @property
    def models(self) -> Path:
        """Model versions' artefacts, one folder per version name."""
        return self.home / "models"

    @property
    def reports(self) -> Path:
        """HTML reports and bundles (what ``cxr reports serve`` serves)."""
        return self.home / "reports"

    @property
    def cache(self) -> Path:
        """The resized image cache, one folder per image size."""
        return self.home / "cache"

    @property
    def synthetic_data(self) -> Path:
        """Where ``cxr demo`` writes its synthetic dataset."""
        return self.home / "data" / "synthetic"

    def model_dir(self, name: str) -> Path:
        """``models/<name>``, created: one model version's folder."""
        path = self.models / name
        path.mkdir(parents=True, exist_ok=True)
        return path
