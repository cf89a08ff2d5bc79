"""What the pull makes of each instance of a study, from its WADO-RS metadata and then from the
retrieved file: what is worth retrieving (a CR/DX frontal radiograph within the pixel limit),
and whether what came back is usable (pixel data that decodes). Pure functions: the task that
runs the pull (:mod:`tasks.pacs`) records each outcome.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cxrmodel.data.imaging import ImageDecodeError, check_patient_age, read_grayscale
from cxrmodel.data.incoming import INCOMING, store_by_content
from cxrmodel.data.records import study_record
from cxrmodel.pacs.dicomweb import value

FRONTAL = ("PA", "AP")
#: The ``studies.source`` of a pulled study.
PACS_SOURCE = "pacs"


@dataclass(frozen=True)
class Candidate:
    """One instance of a searched study: its identifiers and tags, and why it is skipped (None: retrieve it)."""

    fields: dict  # the pacs_instances columns: UIDs, accession number, modality, view
    age: str | None
    sex: str | None
    patient_id: str | None
    skip: str | None

    @property
    def sop_instance_uid(self) -> str:
        return self.fields["sop_instance_uid"]


def _int(meta: dict, key: str) -> int:
    try:
        return int(value(meta, key) or 0)
    except (TypeError, ValueError):
        return 0


def candidates(study_metadata: list[dict], modalities: tuple[str, ...], max_pixels: int, source: str) -> list[Candidate]:
    """The instances of one study with the reason each is skipped, or None for those to retrieve:
    a modality outside ``modalities`` is not a radiograph; a View Position other than PA/AP is
    not frontal (in a study without any frontal instance: a lateral-only study); rows x columns
    x frames over ``max_pixels`` is too large (checked before retrieving anything)."""
    out = []
    for meta in study_metadata:
        modality = str(value(meta, "modality") or "").upper()
        view = str(value(meta, "view") or "").strip().upper()
        fields = {
            "source": source,
            "sop_instance_uid": str(value(meta, "sop")),
            "study_instance_uid": str(value(meta, "study")),
            "series_instance_uid": str(value(meta, "series")),
            "sop_class_uid": value(meta, "sop_class"),
            "accession_number": (str(value(meta, "accession")) or None) if value(meta, "accession") else None,
            "modality": modality or None,
            "view": view or None,
        }
        pixels = _int(meta, "rows") * _int(meta, "columns") * max(_int(meta, "frames"), 1)
        if modality not in modalities:
            skip = f"not a radiograph (modality {modality or 'missing'})"
        elif view not in FRONTAL:
            skip = f"not a frontal view (View Position {view or 'missing'})"
        elif pixels > max_pixels:
            skip = f"over the pixel limit: {_int(meta, 'rows')}x{_int(meta, 'columns')} is over {max_pixels} pixels"
        else:
            skip = None
        age, sex, pid = value(meta, "age"), value(meta, "sex"), value(meta, "patient_id")
        out.append(Candidate(fields, str(age) if age else None, str(sex) if sex else None, str(pid) if pid else None, skip))
    has_frontal = any(c.fields["modality"] in modalities and c.fields["view"] in FRONTAL for c in out)
    if not has_frontal:  # say why the whole study gives nothing to score
        out = [
            Candidate(c.fields, c.age, c.sex, c.patient_id, f"lateral-only study: {c.skip}")
            if c.skip and c.skip.startswith("not a frontal")
            else c
            for c in out
        ]
    return out


class UnusableInstanceError(ValueError):
    """A retrieved instance the model cannot read: ``status`` ``skipped`` (no pixel data, too
    large) or ``failed`` (does not decode), with the reason."""

    def __init__(self, status: str, reason: str) -> None:
        self.status, self.reason = status, reason
        super().__init__(reason)


def store_instance(data: bytes, store: Path, max_pixels: int) -> tuple[Path, str]:
    """Check a retrieved instance (pixel data present, within ``max_pixels``, decodes to a grey
    image) and keep it in ``store`` by its content (:func:`cxrmodel.data.incoming.store_by_content`).
    Returns the stored path and its sha256; :class:`UnusableInstanceError` otherwise (nothing kept)."""
    import pydicom

    store.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=store, prefix=".pacs.", suffix=".dcm")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            header = pydicom.dcmread(tmp, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - any parser failure: an unusable file
            raise UnusableInstanceError("failed", f"does not decode: not a DICOM file ({type(exc).__name__})") from None
        rows, columns = int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0)
        frames = int(header.get("NumberOfFrames", 1) or 1)
        if rows * columns * frames > max_pixels:
            raise UnusableInstanceError("skipped", f"over the pixel limit: {rows}x{columns} is over {max_pixels} pixels")
        try:
            read_grayscale(tmp)
        except ImageDecodeError as exc:
            if "no pixel data" in exc.reason:
                raise UnusableInstanceError("skipped", "no pixel data") from None
            raise UnusableInstanceError("failed", f"does not decode: {exc.reason}") from None
        return store_by_content(Path(tmp), store)
    finally:
        Path(tmp).unlink(missing_ok=True)


def study_of(candidate: Candidate, image: Path, content_hash: str) -> dict:
    """The unlabelled study record of a pulled instance: keyed by its SOP Instance UID, with the
    age, sex, view and patient id of its tags."""
    age, _ = check_patient_age(candidate.age)
    sex = (candidate.sex or "").strip().upper()
    return study_record(
        candidate.sop_instance_uid,
        image,
        content_hash,
        source=PACS_SOURCE,
        split=INCOMING,
        labelled=False,
        patient_id=(candidate.patient_id or None) and candidate.patient_id[:64],
        age=age,
        sex=sex if sex in ("M", "F") else None,
        view=candidate.fields["view"] if candidate.fields["view"] in FRONTAL else None,
    )
