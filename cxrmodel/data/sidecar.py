"""Sidecar metadata of an incoming folder: ``metadata.csv`` and/or ``metadata.json`` beside the
image files, giving each file's age, sex, view and patient id.

- CSV: NIH column names (``Image Index``, ``Patient ID``, ``Patient Age``, ``Patient Gender``,
  ``View Position``) or short ones (``file``, ``patient_id``, ``age``, ``sex``, ``view``);
- JSON: a list of objects with the same keys, or one object keyed by file name.

Names are matched without case, spaces or underscores. Every problem becomes a
:class:`~cxrmodel.data.metadata.QuarantineRecord` with its reason and nothing stops the reading: an
unreadable sidecar is one record, a value that does not parse is left out (the rest of its row
is used), a duplicate row is reported and the first one kept.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cxrmodel.data.imaging import MAX_AGE_YEARS, check_patient_age
from cxrmodel.data.metadata import SEXES, VIEWS, QuarantineRecord

SIDECAR_NAMES = ("metadata.csv", "metadata.json")
#: Sidecar field -> accepted column names or JSON keys.
SIDECAR_FIELDS = {
    "file": ("Image Index", "file", "file_name", "filename", "image"),
    "patient_id": ("Patient ID", "patient_id"),
    "age": ("Patient Age", "age"),
    "sex": ("Patient Gender", "Patient Sex", "sex", "gender"),
    "view": ("View Position", "view", "view_position"),
}
__all__ = ["MAX_AGE_YEARS", "SIDECAR_FIELDS", "SIDECAR_NAMES", "SidecarRow", "parse_sidecar_row", "read_sidecar"]


def _alias(name: object) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


_ALIASES = {_alias(alias): field for field, aliases in SIDECAR_FIELDS.items() for alias in aliases}


@dataclass(frozen=True)
class SidecarRow:
    """The validated fields of one file's sidecar row; ``None`` where absent or invalid."""

    age: float | None
    sex: str | None
    view: str | None
    patient_id: str | None


def _fields(raw: dict) -> dict:
    """Raw column names or JSON keys -> sidecar fields (unknown names are ignored; the first of
    two aliases of one field wins)."""
    out = {}
    for key, value in raw.items():
        field = _ALIASES.get(_alias(key))
        if field and field not in out:
            out[field] = value
    return out


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def parse_sidecar_row(fields: dict) -> tuple[SidecarRow, list[str]]:
    """Validate one row's fields: age as a number or DICOM ``AS`` string (``062Y``, 0-120
    years), sex M/F, view PA/AP. Returns the row and the reasons of the values left out."""
    problems = []
    age, problem = check_patient_age(fields.get("age"))
    if problem:
        problems.append(problem)
    choices: dict[str, str | None] = {}
    for field, allowed in (("sex", SEXES), ("view", VIEWS)):
        value = fields.get(field)
        choices[field] = None
        if _blank(value):
            continue
        if isinstance(value, str) and value.strip().upper() in allowed:
            choices[field] = value.strip().upper()
        else:
            problems.append(f"unknown {field} {value!r} (expected {' or '.join(allowed)})")
    patient = fields.get("patient_id")
    patient_id = None if _blank(patient) else str(patient).strip()
    if patient_id is not None and not patient_id.isprintable():
        problems.append("patient_id with control characters")
        patient_id = None
    return SidecarRow(age, choices["sex"], choices["view"], patient_id), problems


def _records(path: Path) -> list[tuple[int, str | None, object, str]]:
    """``(row number, file name given as the JSON key or None, raw row, raw text)`` of each row
    (CSV: line numbers; JSON: 1-based positions). Raises ValueError when the file as a whole
    cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))  # a symlink swapped in since: refused
        with os.fdopen(fd, "rb") as fh:
            text = fh.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"unreadable: {type(exc).__name__}") from exc
    if path.suffix == ".csv":
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            if "file" not in {_ALIASES.get(_alias(h)) for h in reader.fieldnames or []}:
                raise ValueError(f"no file name column (one of {', '.join(SIDECAR_FIELDS['file'])})")
            return [(reader.line_num, None, row, json.dumps(row)) for row in reader]
        except csv.Error as exc:
            raise ValueError(f"malformed CSV: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc}") from exc
    if isinstance(data, dict):
        return [(i, key, value, json.dumps({key: value})) for i, (key, value) in enumerate(data.items(), 1)]
    if isinstance(data, list):
        return [(i, None, value, json.dumps(value)) for i, value in enumerate(data, 1)]
    raise ValueError("expected a list of objects or an object keyed by file name")


def read_sidecar(folder: str | os.PathLike[str], files: set[str]) -> tuple[dict[str, SidecarRow], list[QuarantineRecord]]:
    """The sidecar rows of ``folder`` by file name, and a quarantine record for every problem:
    an unreadable sidecar, a row that is not an object, has no file name, names a file not in
    ``files`` or repeats one (the first is kept), or a value that does not parse. One record per
    ``(row key, reason)``, the key of the quarantine table."""
    folder = Path(folder)
    rows: dict[str, SidecarRow] = {}
    problems: list[QuarantineRecord] = []
    seen: set[tuple[str, str]] = set()
    for name in SIDECAR_NAMES:
        path = folder / name
        if path.is_symlink():  # like an image symlink: it could name any file on the host
            problems.append(QuarantineRecord(name, None, f"sidecar {name}: a symlink, refused", None))
            continue
        if not path.is_file():
            continue
        try:
            records = _records(path)
        except ValueError as exc:
            problems.append(QuarantineRecord(name, None, f"sidecar {name}: {exc}"[:512], None))
            continue
        for number, given, raw, text in records:
            fields = _fields(raw) if isinstance(raw, dict) else {}
            key = given if given is not None else fields.get("file")
            key = key.strip() if isinstance(key, str) else None
            if not isinstance(raw, dict):
                reasons = ["not an object"]
            elif not key:
                reasons = ["no file name"]
            elif key in rows:
                reasons = ["duplicate row for this file (the first is kept)"]
            else:
                rows[key], reasons = parse_sidecar_row(fields)
                if key not in files:
                    reasons.append("no such PNG/DICOM file in the incoming folder")
            if not reasons:
                continue
            record = QuarantineRecord(
                (key or f"{name} row {number}")[:256], number, f"sidecar {name}: {'; '.join(reasons)}"[:512], text
            )
            if (record.row_key, record.reason) not in seen:
                seen.add((record.row_key, record.reason))
                problems.append(record)
    return rows, problems
