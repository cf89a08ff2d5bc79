"""The shipped pipeline configurations (``demo``, ``seed004``, ``small-real``), installed as
package data and found with :mod:`importlib.resources`, so an installed ``cxr`` finds them
outside the checkout.

Which configuration a command runs is decided in one place,
:func:`deployments.settings.resolve_config`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

#: The configuration every command, flow and deployment runs unless ``--config`` or
#: ``CXR_CONFIG`` names another: the one that runs anywhere (CPU, no downloads).
DEFAULT = "demo"


def names() -> list[str]:
    """The shipped configurations' names (file names without ``.yaml``)."""
    return sorted(entry.name.removesuffix(".yaml") for entry in files(__name__).iterdir() if entry.name.endswith(".yaml"))


def shipped(name: str) -> Path | None:
    """The file of the shipped configuration ``name`` (``small-real`` or ``small-real.yaml``),
    or ``None`` when no shipped configuration has that name. Wheels install unpacked, so the
    resource is a real file."""
    stem = name.removesuffix(".yaml")
    if stem not in names():
        return None
    return Path(str(files(__name__).joinpath(f"{stem}.yaml")))
