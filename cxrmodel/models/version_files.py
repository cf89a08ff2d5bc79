"""What a registered model version is on disk, as plain values: enough to load it.

Kept apart from :mod:`cxrmodel.models.loading` (which imports torch) so that the database layer
can describe a version without importing the network code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelVersionFiles:
    """A model version's artefact and its expected sha256, its kind and config (``image_size``,
    ``age_scaler``, ...), and for an embedding baseline its parent network's files."""

    version_id: int
    name: str
    kind: str
    artifact_path: str
    sha256: str
    config: dict[str, Any] = field(default_factory=dict)
    parent: ModelVersionFiles | None = None

    @classmethod
    def of(cls, version: object, parent: object | None = None) -> ModelVersionFiles:
        """From anything with a registry row's attributes (``id``, ``name``, ``kind``,
        ``artifact_path``, ``sha256``, ``config``), and its parent network's."""
        return cls(
            version.id,
            version.name,
            version.kind,
            version.artifact_path,
            version.sha256,
            dict(version.config or {}),
            cls.of(parent) if parent is not None else None,
        )
