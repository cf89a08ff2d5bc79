"""What the database and the store check: the vocabulary of every status, kind, action, split
and method column (a CHECK constraint each), and the column names a write may use.

Strict writes: a key that is not a column is refused with :func:`require_columns` (the
``ValueError`` names it) instead of being dropped without a word.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from sqlalchemy import CheckConstraint

from cxrmodel.models.kinds import NETWORK_KINDS
from db.statuses import (
    ModelKind,
    ModelStatus,
    PacsInstanceStatus,
    PacsObjectKind,
    PacsObjectStatus,
    PromotionAction,
    RunStatus,
    ScoringStatus,
    ScoringTrigger,
    SelectionBasis,
    StudySplit,
    StudyStatus,
    ThresholdMethod,
)


def one_of_sql(column: str, values: Iterable[StrEnum | str]) -> str:
    """``column IN ('a', 'b', ...)``: the SQL of a CHECK that the column holds one of ``values``
    (NULL passes, as in every CHECK)."""
    return f"{column} IN ({', '.join(repr(str(v)) for v in sorted(values))})"


def one_of(column: str, values: Iterable[StrEnum | str]) -> CheckConstraint:
    """The CHECK constraint ``ck_<table>_<column>`` of :func:`one_of_sql`."""
    return CheckConstraint(one_of_sql(column, values), name=column)


#: table -> {column: allowed values}: every CHECK-constrained column (migration 0006 adds them; 0007 selection_basis; 0009 scoring_runs.trigger).
CHECKED_COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    "studies": {"status": tuple(StudyStatus), "split": tuple(StudySplit)},
    "refresh_runs": {"status": tuple(RunStatus)},
    "model_versions": {"status": tuple(ModelStatus), "kind": tuple(ModelKind), "selection_basis": tuple(SelectionBasis)},
    "training_runs": {"status": tuple(RunStatus), "architecture": tuple(NETWORK_KINDS)},
    "threshold_sets": {"method": tuple(ThresholdMethod)},
    "scoring_runs": {"status": tuple(ScoringStatus), "trigger": tuple(ScoringTrigger)},
    "promotions": {"action": tuple(PromotionAction)},
    "pacs_instances": {"status": tuple(PacsInstanceStatus)},  # migration 0011
    "pacs_objects": {"status": tuple(PacsObjectStatus), "kind": tuple(PacsObjectKind)},
}


def checks(table: str) -> tuple[CheckConstraint, ...]:
    return tuple(one_of(column, values) for column, values in CHECKED_COLUMNS[table].items())


def column_names(model: type, leave_out: Iterable[str] = ()) -> set[str]:
    """The column names of ``model``'s table, less ``leave_out``."""
    return {c.name for c in model.__table__.columns} - set(leave_out)


def require_columns(what: str, keys: Iterable[str], allowed: set[str]) -> None:
    """``ValueError`` naming every key of ``keys`` that is not in ``allowed``: a write that would
    otherwise drop a misspelled metric without a word."""
    unknown = sorted(set(keys) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown {what} key(s) {', '.join(map(repr, unknown))}: not columns of the table (allowed: {', '.join(sorted(allowed))})"
        )
