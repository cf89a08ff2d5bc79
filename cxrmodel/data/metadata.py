"""Parse the NIH ChestX-ray14 metadata table, find its images, and build patient features.

The real ``Data_Entry_2017_v2020.csv`` has a quirky header: 9 names for 11 fields, because
``OriginalImage[Width,Height]`` and ``OriginalImagePixelSpacing[x,y]`` are unquoted and each
stand for two columns. The older ``Data_Entry_2017.csv`` has the same layout plus a trailing
empty column and ages such as ``'058Y'``. :func:`read_nih_metadata` expands bracketed header
names itself (``OriginalImage[Width,Height]`` -> ``OriginalImage.Width``,
``OriginalImage.Height``) and reads every line with the :mod:`csv` module, so both files line
up; a bad row is quarantined with its reason and never stops the parse.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrmodel.data.imaging import MAX_AGE_YEARS, is_plain_file_name, parse_patient_age
from cxrmodel.errors import UserError
from cxrmodel.findings import FINDINGS, NUM_FINDINGS, UnknownFindingError, encode_findings, parse_finding_labels

COL_KEY = "Image Index"
COL_LABELS = "Finding Labels"
COL_FOLLOW_UP = "Follow-up #"
COL_PATIENT = "Patient ID"
COL_AGE = "Patient Age"
COL_SEX = "Patient Gender"
COL_VIEW = "View Position"
COL_WIDTH = "OriginalImage.Width"
COL_HEIGHT = "OriginalImage.Height"
REQUIRED_COLUMNS: tuple[str, ...] = (COL_KEY, COL_LABELS, COL_FOLLOW_UP, COL_PATIENT, COL_AGE, COL_SEX, COL_VIEW)

AGE_RANGE = (0.0, MAX_AGE_YEARS)
SEXES = ("M", "F")
VIEWS = ("PA", "AP")
OUTPUT_COLUMNS: tuple[str, ...] = (
    "study_key", "patient_id", "follow_up", "age", "sex", "view", "width", "height",
    *FINDINGS, "no_finding",
)  # fmt: skip

_INT_RE = re.compile(r"^\s*[0-9]+\s*$")
# The largest value a whole-number column may hold: what the output frame's int64 columns can
# store. Checked on each row's Python int before any cast, so one 20-digit cell quarantines its
# row instead of failing the frame (and the refresh) with an OverflowError; the database's own,
# narrower limits (INTEGER) are checked later by ``db.validation`` with their own reason.
INT_COLUMN_MAX = 2**63 - 1
_INT_COLUMN_DIGITS = len(str(INT_COLUMN_MAX))
_BRACKET_RE = re.compile(r"^(?P<base>[^\[\]]*)\[(?P<parts>[^\[\]]*)\]$")


@dataclass(frozen=True)
class QuarantineRecord:
    """One rejected metadata row: its Image Index (or ``''``), file line number (header = 1;
    ``None`` for a whole file), why it was rejected, and the raw line (``None`` if there is none)."""

    row_key: str
    row_number: int | None
    reason: str
    raw: str | None


@dataclass
class MetadataResult:
    """Parsed studies (one row per accepted image; see :data:`OUTPUT_COLUMNS`) and the
    quarantined rows."""

    studies: pd.DataFrame
    quarantined: list[QuarantineRecord] = field(default_factory=list)


class _BadRow(ValueError):
    """Internal: a row-level problem; the message becomes the quarantine reason."""


class MetadataFileError(UserError):
    """The metadata file as a whole cannot be read (empty, wrong header, not text): the
    user's to fix, never retried."""


# --------------------------------------------------------------------------------------
# Header


def _expand_bracket(name: str) -> list[str]:
    """``'OriginalImage[Width,Height]'`` -> ``['OriginalImage.Width', 'OriginalImage.Height']``."""
    match = _BRACKET_RE.match(name)
    if not match:
        raise MetadataFileError(f"malformed metadata header: cannot read column name {name[:80]!r}")
    parts = [p.strip() for p in match.group("parts").split(",")]
    return [f"{match.group('base').strip()}.{p}" for p in parts]


def expand_header(fields: list[str]) -> list[str]:
    """Column names for a NIH header row, with each ``Name[a,b]`` spread over its columns.

    Works whether the bracketed name was split by the CSV reader (unquoted, the real file)
    or kept whole (quoted). Trailing empty names (the old file's extra comma) are dropped.
    """
    names: list[str] = []
    pending: list[str] | None = None
    for raw in fields:
        token = raw.strip()
        if pending is not None:
            pending.append(token)
            if "]" in token:
                names.extend(_expand_bracket(",".join(pending)))
                pending = None
        elif "[" in token and "]" not in token:
            pending = [token]
        elif "[" in token:
            names.extend(_expand_bracket(token))
        else:
            names.append(token)
    if pending is not None:
        raise MetadataFileError(f"malformed metadata header: unterminated '[' in {','.join(pending)[:80]!r}")
    while names and names[-1] == "":
        names.pop()
    return names


# --------------------------------------------------------------------------------------
# Rows


def _parse_int(value: str, column: str) -> int:
    """A non-negative whole number within :data:`INT_COLUMN_MAX`, or ``_BadRow`` with the reason.

    The range is checked on the digits before ``int()`` is called: Python refuses to convert
    strings of more than 4,300 digits, and a frame column cannot hold more than int64.
    """
    if not _INT_RE.match(value):
        raise _BadRow(f"malformed number in {column}: {value[:40]!r}")
    digits = value.strip()
    significant = digits.lstrip("0")
    if len(significant) > _INT_COLUMN_DIGITS or (significant and int(significant) > INT_COLUMN_MAX):
        shown = digits if len(digits) <= 40 else f"{digits[:40]}... ({len(digits)} digits)"
        raise _BadRow(f"number out of range in {column}: {shown} is over {INT_COLUMN_MAX}")
    return int(significant or "0")


def _parse_id(value: str, column: str) -> str:
    """A whole-number identifier kept as text (leading zeros dropped, as ``str(int(v))`` would),
    never converted to an integer: its length is the database's to judge (``String(64)``)."""
    if not _INT_RE.match(value):
        raise _BadRow(f"malformed number in {column}: {value[:40]!r}")
    return value.strip().lstrip("0") or "0"


def _parse_optional_int(row: Mapping[str, str], column: str) -> int | None:
    value = row.get(column)
    if value is None or value.strip() == "":
        return None
    return _parse_int(value, column)


def _parse_row(row: Mapping[str, str]) -> dict[str, object]:
    """Validate one row (column name -> cell) into an output record, or raise ``_BadRow``."""
    key = row[COL_KEY].strip()
    if not is_plain_file_name(key):
        raise _BadRow(f"study key is not a plain file name: {key!r}")
    follow_up = _parse_int(row[COL_FOLLOW_UP], COL_FOLLOW_UP)
    patient_id = _parse_id(row[COL_PATIENT], COL_PATIENT)
    age = parse_patient_age(row[COL_AGE])
    if age is None:
        raise _BadRow(f"malformed number in {COL_AGE}: {row[COL_AGE][:40]!r}")
    if not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
        raise _BadRow(f"age outside {AGE_RANGE[0]:g}-{AGE_RANGE[1]:g}: {age:g}")
    width = _parse_optional_int(row, COL_WIDTH)
    height = _parse_optional_int(row, COL_HEIGHT)
    try:
        names = parse_finding_labels(row[COL_LABELS])
    except UnknownFindingError as exc:
        text = str(exc)
        raise _BadRow(
            text if text.startswith(("unknown finding", "contradiction")) else f"invalid finding labels: {text}"
        ) from exc
    sex = row[COL_SEX].strip().upper()
    if sex not in SEXES:
        raise _BadRow(f"unknown sex: {row[COL_SEX]!r}")
    view = row[COL_VIEW].strip().upper()
    if view not in VIEWS:
        raise _BadRow(f"unknown view position: {row[COL_VIEW]!r}")
    return {
        "study_key": key,
        "patient_id": patient_id,
        "follow_up": follow_up,
        "age": age,
        "sex": sex,
        "view": view,
        "width": width,
        "height": height,
        "labels": encode_findings(names),
    }


def _to_frame(records: list[dict[str, object]]) -> pd.DataFrame:
    """Records -> the output DataFrame with stable dtypes (also for zero rows)."""
    labels = np.stack([r["labels"] for r in records]).astype(np.uint8) if records else np.zeros((0, NUM_FINDINGS), dtype=np.uint8)
    frame = pd.DataFrame(
        {
            "study_key": pd.Series([r["study_key"] for r in records], dtype=object),
            "patient_id": pd.Series([r["patient_id"] for r in records], dtype=object),
            "follow_up": pd.Series([r["follow_up"] for r in records], dtype="int64"),
            "age": pd.Series([r["age"] for r in records], dtype="float64"),
            "sex": pd.Series([r["sex"] for r in records], dtype=object),
            "view": pd.Series([r["view"] for r in records], dtype=object),
            "width": pd.Series([r["width"] for r in records], dtype="Int64"),
            "height": pd.Series([r["height"] for r in records], dtype="Int64"),
        }
    )
    for j, name in enumerate(FINDINGS):
        frame[name] = labels[:, j]
    frame["no_finding"] = (labels.sum(axis=1) == 0).astype(np.uint8)
    return frame


def _decoded_lines(path: str | os.PathLike[str]):
    """``(line number, text, decode error or None)`` of each line, each decoded on its own: a
    line that is not UTF-8 is one bad row (its text with the bad bytes as ``\\x..`` escapes), not
    an unreadable file. A leading byte-order mark is dropped."""
    with open(path, "rb") as fh:
        for number, data in enumerate(fh, start=1):
            if number == 1 and data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]
            data = data.rstrip(b"\r\n")
            try:
                yield number, data.decode("utf-8"), None
            except UnicodeDecodeError as exc:
                yield number, data.decode("utf-8", "backslashreplace"), f"not UTF-8 text (byte {exc.start + 1} of the line)"


def read_nih_metadata(path: str | os.PathLike[str]) -> MetadataResult:
    """Parse ``Data_Entry_2017_v2020.csv`` or the older ``Data_Entry_2017.csv``.

    Returns accepted studies (columns :data:`OUTPUT_COLUMNS`: ``study_key`` is the Image
    Index, ``patient_id`` the string of the integer ID, ``width``/``height`` nullable ints,
    the 14 findings and ``no_finding`` as uint8 0/1) and a :class:`QuarantineRecord` for each
    rejected row: wrong field count or malformed number, unknown finding, age outside
    0-120, unknown sex, unknown view position, a study key that is not a plain file name,
    or a duplicate Image Index (the first accepted row is kept; later ones are
    quarantined), a line that is not UTF-8 text. Raises :class:`MetadataFileError` (a
    :class:`~cxrmodel.errors.UserError`) if the file is empty or its header lacks a
    required column or is not text.
    """
    records: list[dict[str, object]] = []
    quarantined: list[QuarantineRecord] = []
    first_line: dict[str, int] = {}
    lines = _decoded_lines(path)
    header_number, header_line, header_error = next(lines, (1, "", None))
    if header_error or not header_line.strip():
        why = "is empty (no header)" if not header_error else "has a header that is not UTF-8 text"
        raise MetadataFileError(f"metadata file {Path(path).name!r} {why}")
    columns = expand_header(next(csv.reader([header_line])))
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise MetadataFileError(f"metadata header is missing required column(s): {', '.join(missing)}")
    n_fields = len(columns)
    for line_number, raw, decode_error in lines:
        if not raw.strip():
            continue
        fields = next(csv.reader(io.StringIO(raw)), [])
        while len(fields) > n_fields and fields[-1].strip() == "":
            fields.pop()  # old file: trailing empty column
        row_key = fields[0].strip() if fields else ""
        try:
            if decode_error:
                raise _BadRow(decode_error)
            if len(fields) != n_fields:
                raise _BadRow(f"wrong number of fields: expected {n_fields}, got {len(fields)}")
            record = _parse_row(dict(zip(columns, fields, strict=True)))
            key = str(record["study_key"])
            if key in first_line:
                raise _BadRow(f"duplicate Image Index (first seen on line {first_line[key]})")
        except _BadRow as exc:
            quarantined.append(QuarantineRecord(row_key, line_number, str(exc), raw))
            continue
        first_line[key] = line_number
        records.append(record)
    return MetadataResult(studies=_to_frame(records), quarantined=quarantined)


# --------------------------------------------------------------------------------------
# Images on disk


def locate_images(root: str | os.PathLike[str], keys: Iterable[str]) -> dict[str, Path]:
    """Map each study key to its file under ``root/images/`` or ``root/images_NNN/images/``.

    Folders are listed once each (``images`` first, then ``images_*/images`` in sorted
    order); the first folder holding a key wins. Keys not found are absent from the result.
    """
    base = Path(root)
    wanted = {k for k in keys if is_plain_file_name(k)}
    folders = [base / "images", *sorted(base.glob("images_*/images"))]
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir() or len(found) == len(wanted):
            continue
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name in wanted and entry.name not in found and entry.is_file():
                    found[entry.name] = Path(entry.path)
    return found


# --------------------------------------------------------------------------------------
# Patient features


@dataclass(frozen=True)
class AgeScaler:
    """Min-max age scaling to [0, 1], fitted on training ages only; values outside clip.

    A missing age is replaced by the **median of the fit data**, scaled the same way, so it
    sits in the middle of the training distribution rather than at an extreme.
    """

    min_age: float
    max_age: float
    median_age: float

    @classmethod
    def fit(cls, ages: Iterable[float | None]) -> AgeScaler:
        """Fit on training ages (``None``/NaN ignored); raises ``ValueError`` if none are known."""
        values = pd.to_numeric(pd.Series(list(ages), dtype=object), errors="coerce").to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ValueError("AgeScaler.fit needs at least one known age")
        return cls(float(values.min()), float(values.max()), float(np.median(values)))

    def transform(self, ages: Iterable[float | None]) -> np.ndarray:
        """Scaled ages as float32; missing -> scaled median; constant fit data -> 0."""
        values = pd.to_numeric(pd.Series(list(ages), dtype=object), errors="coerce").to_numpy(dtype=float)
        values = np.where(np.isfinite(values), values, self.median_age)
        span = self.max_age - self.min_age
        scaled = (values - self.min_age) / span if span > 0 else np.zeros_like(values)
        return np.clip(scaled, 0.0, 1.0).astype(np.float32)

    def to_dict(self) -> dict[str, float]:
        """JSON-friendly form, to be stored with the model."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, float]) -> AgeScaler:
        """Inverse of :meth:`to_dict`."""
        return cls(float(data["min_age"]), float(data["max_age"]), float(data["median_age"]))


def patient_features(df: pd.DataFrame, scaler: AgeScaler) -> np.ndarray:
    """Float32 ``[N, 3]``: (scaled age, sex M=0/F=1, view PA=0/AP=1).

    Missing age -> the scaler's scaled median; missing or other sex/view -> 0.
    """
    age = scaler.transform(df["age"].tolist()) if "age" in df else scaler.transform([None] * len(df))
    sex = df["sex"].astype(object).map(lambda v: 1.0 if v == "F" else 0.0).to_numpy(float) if "sex" in df else 0.0
    view = df["view"].astype(object).map(lambda v: 1.0 if v == "AP" else 0.0).to_numpy(float) if "view" in df else 0.0
    out = np.zeros((len(df), 3), dtype=np.float32)
    out[:, 0] = age
    out[:, 1] = sex
    out[:, 2] = view
    return out


def labels_matrix(df: pd.DataFrame) -> np.ndarray:
    """uint8 ``[N, 14]`` of the finding columns in :data:`FINDINGS` order."""
    missing = [f for f in FINDINGS if f not in df.columns]
    if missing:
        raise ValueError(f"frame lacks finding column(s): {', '.join(missing)}")
    return df[list(FINDINGS)].to_numpy(dtype=np.uint8)
