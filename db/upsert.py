"""Dialect-aware bulk upserts (SQLite and PostgreSQL ``INSERT ... ON CONFLICT``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

CHUNK_ROWS = 10_000


def upsert(
    session: Session,
    model: type,
    rows: Sequence[dict],
    conflict_columns: Iterable[str],
    update_columns: Iterable[str] | None = None,
) -> int:
    """Insert ``rows`` into ``model``'s table; on a conflict over ``conflict_columns`` update
    ``update_columns`` (or do nothing when it is empty). Returns the number of rows sent."""
    if not rows:
        return 0
    conflict_columns = list(conflict_columns)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        insert = postgresql.insert
    elif dialect == "sqlite":
        insert = sqlite.insert
    else:  # pragma: no cover - only the two supported back ends
        raise NotImplementedError(f"upsert is not implemented for {dialect}")
    update_columns = list(update_columns) if update_columns is not None else []
    stmt = insert(model)
    if update_columns:
        stmt = stmt.on_conflict_do_update(index_elements=conflict_columns, set_={c: stmt.excluded[c] for c in update_columns})
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=conflict_columns)
    # executemany with a parameter list: SQLAlchemy batches it into multi-row INSERTs
    # ("insertmanyvalues") without compiling one giant statement per chunk.
    for start in range(0, len(rows), CHUNK_ROWS):
        session.execute(stmt, list(rows[start : start + CHUNK_ROWS]))
    return len(rows)
