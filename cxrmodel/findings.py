"""The 14 ChestX-ray14 findings, in the one order used for every model output and table."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"
NUM_FINDINGS = len(FINDINGS)
FINDING_INDEX = {name: i for i, name in enumerate(FINDINGS)}


class UnknownFindingError(ValueError):
    """A label string names a finding outside the 14 ChestX-ray14 classes."""


def parse_finding_labels(text: str) -> list[str]:
    """Split a ``Finding Labels`` cell (``'Effusion|Mass'``) into finding names.

    ``'No Finding'`` gives an empty list. Raises :class:`UnknownFindingError` for any
    name that is not one of :data:`FINDINGS`, and for ``No Finding`` mixed with findings.
    """
    if not isinstance(text, str) or not text.strip():
        raise UnknownFindingError("empty finding label")
    names = [part.strip() for part in text.split("|")]
    if names == [NO_FINDING]:
        return []
    if NO_FINDING in names:
        raise UnknownFindingError("contradiction: No Finding with findings")
    unknown = [n for n in names if n not in FINDING_INDEX]
    if unknown:
        raise UnknownFindingError(f"unknown finding name(s): {', '.join(sorted(set(unknown)))}")
    if len(set(names)) != len(names):
        raise UnknownFindingError(f"repeated finding in {text!r}")
    return names


def encode_findings(names: Iterable[str]) -> np.ndarray:
    """One-hot vector of shape ``[14]`` (uint8) for a list of finding names."""
    vec = np.zeros(NUM_FINDINGS, dtype=np.uint8)
    for name in names:
        vec[FINDING_INDEX[name]] = 1
    return vec


def format_finding_labels(names: Iterable[str]) -> str:
    """The NIH ``Finding Labels`` cell for a list of names (``No Finding`` when empty)."""
    names = list(names)
    return "|".join(names) if names else NO_FINDING
