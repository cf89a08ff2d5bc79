"""Study records: what a refresh hands to the database, one plain dict per study.

A record carries :data:`STUDY_FIELDS` plus its ``study_key``; ``content_hash`` is always the
sha256 of the image file's bytes (computed once per refresh, then reused by the image cache).
A :class:`StudyBatch` is one source's records with their labels, splits and quarantined rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cxrmodel.data.metadata import QuarantineRecord

#: The study columns a source provides (the database adds id, status and timestamps).
STUDY_FIELDS = ("patient_id", "follow_up", "age", "sex", "view", "source", "split", "image_path", "content_hash", "labelled")


def study_record(
    key: str,
    path: Path,
    content_hash: str,
    *,
    source: str,
    split: str | None,
    labelled: bool,
    patient_id: str | None = None,
    follow_up: int | None = None,
    age: float | None = None,
    sex: str | None = None,
    view: str | None = None,
) -> dict[str, object]:
    """One study record (keys ``study_key`` and :data:`STUDY_FIELDS`)."""
    return {
        "study_key": key,
        "patient_id": patient_id,
        "follow_up": follow_up,
        "age": age,
        "sex": sex,
        "view": view,
        "source": source,
        "split": split,
        "image_path": str(path),
        "content_hash": content_hash,
        "labelled": labelled,
    }


@dataclass
class StudyBatch:
    """What one source yields: study records, the labels of labelled ones (``study key ->
    {finding: 0/1}``), their splits, quarantined rows, and how many source rows were read."""

    records: list[dict[str, object]]
    quarantined: list[QuarantineRecord] = field(default_factory=list)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=dict)
    n_rows: int = 0

    def split_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for split in self.splits.values():
            counts[split] = counts.get(split, 0) + 1
        return counts
