"""An incoming folder as study records: every PNG/JPEG/DICOM file becomes an unlabelled study.

Age, sex, view and patient id come from the file's DICOM tags first, then from the folder's
sidecar (``metadata.csv`` / ``metadata.json``, :mod:`cxrmodel.data.sidecar`) for what the tags
lack. Sidecar problems and unsafe file names are quarantine records with their reason, never
fatal; a DICOM file whose header does not read is still registered (scoring records why it
fails), and so is a study with no metadata at all.
"""

from __future__ import annotations

import os
from pathlib import Path

from cxrmodel.data.imaging import ImageDecodeError, is_plain_file_name, read_dicom_metadata
from cxrmodel.data.metadata import QuarantineRecord
from cxrmodel.data.records import StudyBatch, study_record
from cxrmodel.data.sidecar import read_sidecar
from cxrmodel.io import sha256_file

INCOMING_SUFFIXES = frozenset({".png", ".dcm", ".jpg", ".jpeg"})
INCOMING = "incoming"  # the source and the split of every incoming study
PATIENT_FIELDS = ("age", "sex", "view", "patient_id")


def incoming_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in INCOMING_SUFFIXES)


def _dicom_fields(path: Path) -> dict[str, object]:
    if path.suffix.lower() != ".dcm":
        return {}
    try:
        return read_dicom_metadata(path)
    except ImageDecodeError:
        return {}  # still registered: scoring records the failure


def read_incoming_folder(folder: str | os.PathLike[str]) -> StudyBatch:
    """The unlabelled study records of ``folder`` (content hash: the file's sha256) and the
    quarantine records of its sidecar and of files refused for an unsafe name."""
    folder = Path(folder).resolve()
    paths = incoming_files(folder)
    sidecar, problems = read_sidecar(folder, {p.name for p in paths})
    quarantined = list(problems)
    records = []
    for path in paths:
        if not is_plain_file_name(path.name) or path.is_symlink():
            quarantined.append(QuarantineRecord(path.name, None, "unsafe file name or symlink", None))
            continue
        meta = dict.fromkeys(PATIENT_FIELDS) | {k: v for k, v in _dicom_fields(path).items() if v is not None}
        row = sidecar.get(path.name)
        if row is not None:  # a DICOM file's own tags come first; the sidecar fills the gaps
            meta.update({f: getattr(row, f) for f in PATIENT_FIELDS if meta[f] is None})
        records.append(study_record(path.name, path, sha256_file(path), source=INCOMING, split=INCOMING, labelled=False, **meta))
    return StudyBatch(records, quarantined)  # n_rows counts metadata rows: a folder has none
