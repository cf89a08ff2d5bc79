"""What a column can hold, read from the SQLAlchemy models themselves, checked in Python before
a write, so both databases agree: PostgreSQL refuses an over-long ``varchar(n)``, an integer
out of range or a NUL character and fails the whole statement, while SQLite stores all three.

A study record that does not fit becomes a quarantine record with its reason (never a failed
refresh); a quarantine record itself is cut to fit its own columns (:func:`fit_to_columns`).
The limits are derived from the column types, not kept by hand: ``String(n)`` -> at most ``n``
characters, ``SmallInteger``/``Integer``/``BigInteger`` -> their signed range, ``Float`` ->
finite, every text column -> no NUL character.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

from sqlalchemy import BigInteger, Boolean, Float, Integer, SmallInteger, String

INTEGER_RANGES = {
    SmallInteger: (-(2**15), 2**15 - 1),
    BigInteger: (-(2**63), 2**63 - 1),
    Integer: (-(2**31), 2**31 - 1),
}


@dataclass(frozen=True)
class ColumnLimit:
    """What one column accepts: text up to ``max_length`` (``None``: unbounded), an integer in
    ``int_range``, a finite float, or a boolean."""

    name: str
    nullable: bool
    max_length: int | None = None
    text: bool = False
    int_range: tuple[int, int] | None = None
    real: bool = False
    boolean: bool = False

    def problem(self, value: object) -> str | None:
        """Why ``value`` does not fit this column, or ``None`` when it does."""
        if value is None:
            return None if self.nullable else f"{self.name} is required"
        if self.text:
            if not isinstance(value, str):
                return f"{self.name} is not text"
            if "\x00" in value:
                return f"{self.name} contains a NUL character"
            if self.max_length is not None and len(value) > self.max_length:
                return f"{self.name} longer than {self.max_length} characters ({len(value)})"
        elif self.boolean:
            if not isinstance(value, bool):
                return f"{self.name} is not a boolean"
        elif self.int_range is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                return f"{self.name} is not an integer"
            low, high = self.int_range
            if not low <= value <= high:
                return f"{self.name} outside {low}..{high}"
        elif self.real:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                return f"{self.name} is not a finite number"
        return None


def _limit(column) -> ColumnLimit:
    type_ = column.type
    nullable = bool(column.nullable)
    if isinstance(type_, String):  # Text is a String without a length
        return ColumnLimit(column.name, nullable, max_length=type_.length, text=True)
    if isinstance(type_, Boolean):
        return ColumnLimit(column.name, nullable, boolean=True)
    for kind, bounds in INTEGER_RANGES.items():
        if isinstance(type_, kind):
            return ColumnLimit(column.name, nullable, int_range=bounds)
    if isinstance(type_, Float):
        return ColumnLimit(column.name, nullable, real=True)
    return ColumnLimit(column.name, True)  # JSON, DateTime: typed by the caller, not checked here


@cache
def column_limits(model: type) -> dict[str, ColumnLimit]:
    """``column name -> ColumnLimit`` of every column of ``model``'s table."""
    return {c.name: _limit(c) for c in model.__table__.columns}


def problems(model: type, row: Mapping[str, object]) -> list[str]:
    """Why ``row`` cannot be written to ``model``'s table as it is (empty when it can). Keys that
    are not columns are left to the caller's strictness."""
    limits = column_limits(model)
    found = (limits[name].problem(value) for name, value in row.items() if name in limits)
    return [p for p in found if p is not None]


def fit_text(value: str | None, max_length: int | None) -> str | None:
    """``value`` without NUL characters and cut to ``max_length`` (an ellipsis marks the cut)."""
    if value is None:
        return None
    value = value.replace("\x00", "\\x00")
    if max_length is not None and len(value) > max_length:
        return value[: max_length - 1] + "…"
    return value


def fit_to_columns(model: type, row: Mapping[str, object], columns: Iterable[str]) -> dict[str, object]:
    """``row`` with each text column among ``columns`` made to fit (:func:`fit_text`): for rows
    that must be written whatever they hold, such as quarantine records and error reasons."""
    limits = column_limits(model)
    out = dict(row)
    for name in columns:
        if isinstance(out.get(name), str):
            out[name] = fit_text(out[name], limits[name].max_length)
    return out


def fit_column(model: type, column: str, value: str | None) -> str | None:
    """One text value made to fit ``model.column``."""
    return fit_text(value, column_limits(model)[column].max_length)
