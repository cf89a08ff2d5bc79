"""An incoming folder as study records: every PNG/JPEG/DICOM file becomes an unlabelled study.

Age, sex, view and patient id come from the file's DICOM tags first, then from the folder's
sidecar (``metadata.csv`` / ``metadata.json``, :mod:`cxrmodel.data.sidecar`) for what the tags
lack. Sidecar problems and unsafe file names are quarantine records with their reason, never
fatal; a DICOM file whose header does not read is still registered (scoring records why it
fails), and so is a study with no metadata at all.

With a ``store`` folder each file is first copied to ``store/<sha256><suffix>`` (content
addressed: the copy is hashed, so its name is its content), and the study's image path is
the copy: a later file of the same name in the incoming folder never changes the pixels an
earlier study was scored on.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from cxrmodel.data.imaging import ImageDecodeError, is_plain_file_name, read_dicom_patient
from cxrmodel.data.metadata import QuarantineRecord
from cxrmodel.data.records import StudyBatch, study_record
from cxrmodel.data.sidecar import read_sidecar
from cxrmodel.io import CHUNK, sha256_file

INCOMING_SUFFIXES = frozenset({".png", ".dcm", ".jpg", ".jpeg"})
INCOMING = "incoming"  # the source and the split of every incoming study
PATIENT_FIELDS = ("age", "sex", "view", "patient_id")


def incoming_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in INCOMING_SUFFIXES)


def _dicom_fields(path: Path) -> tuple[dict[str, object], list[str]]:
    if path.suffix.lower() != ".dcm":
        return {}, []
    try:
        return read_dicom_patient(path)
    except ImageDecodeError:
        return {}, []  # still registered: scoring records the failure


def store_by_content(path: Path, store: Path) -> tuple[Path, str]:
    """Copy ``path`` into ``store`` as ``<sha256 of the copy><suffix>`` (kept if already there);
    returns the stored path and the hash."""
    store.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=store, prefix=".incoming.", suffix=".tmp")
    try:
        source_fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))  # a symlink swapped in: refused
        with os.fdopen(source_fd, "rb") as source, os.fdopen(fd, "wb") as copy:
            while block := source.read(CHUNK):
                digest.update(block)
                copy.write(block)
        target = store / f"{digest.hexdigest()}{path.suffix.lower()}"
        if target.is_file():
            os.unlink(tmp)
        else:
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target, digest.hexdigest()


def read_incoming_folder(folder: str | os.PathLike[str], store: str | os.PathLike[str] | None = None) -> StudyBatch:
    """The unlabelled study records of ``folder`` (content hash: the file's sha256; image path:
    its content-addressed copy in ``store`` when given) and the quarantine records of its
    sidecar, of files refused for an unsafe name, and of DICOM tags left out (an age over 120)."""
    folder = Path(folder).resolve()
    paths = incoming_files(folder)
    sidecar, problems = read_sidecar(folder, {p.name for p in paths})
    quarantined = list(problems)
    records = []
    for path in paths:
        if not is_plain_file_name(path.name) or path.is_symlink():
            quarantined.append(QuarantineRecord(path.name, None, "unsafe file name or symlink", None))
            continue
        tags, tag_problems = _dicom_fields(path)
        quarantined += [QuarantineRecord(path.name, None, reason, None) for reason in tag_problems]
        meta = dict.fromkeys(PATIENT_FIELDS) | {k: v for k, v in tags.items() if v is not None}
        row = sidecar.get(path.name)
        if row is not None:  # a DICOM file's own tags come first; the sidecar fills the gaps
            meta.update({f: getattr(row, f) for f in PATIENT_FIELDS if meta[f] is None})
        image, content_hash = store_by_content(path, Path(store)) if store is not None else (path, sha256_file(path))
        records.append(study_record(path.name, image, content_hash, source=INCOMING, split=INCOMING, labelled=False, **meta))
    return StudyBatch(records, quarantined)  # n_rows counts metadata rows: a folder has none
