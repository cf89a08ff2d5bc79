"""Dialect-aware bulk upserts (SQLite and PostgreSQL ``INSERT ... ON CONFLICT``).

Rows that all carry the same columns (the common case: predictions, scoring failures,
quarantined rows) go straight to the driver's ``executemany`` through the session's own
connection and transaction, with SQLAlchemy's per-type bind processors applied in one tight
loop. That is close to a bare ``cursor.executemany``; the ORM bulk-insert path costs about
twice as much per row on SQLite. Anything else (rows with different key sets, or a missing
column that has a Python-side default to fill in) takes SQLAlchemy's executemany path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from operator import itemgetter

from sqlalchemy import Table, and_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

CHUNK_ROWS = 10_000
_PLACEHOLDER = {"qmark": "?", "format": "%s", "pyformat": "%s"}


def upsert(
    session: Session,
    model: type,
    rows: Sequence[dict],
    conflict_columns: Iterable[str],
    update_columns: Iterable[str] | None = None,
    *,
    constants: dict | None = None,
    update_if_equal: Iterable[str] = (),
) -> int:
    """Insert ``rows`` into ``model``'s table; on a conflict over ``conflict_columns`` update
    ``update_columns`` (or do nothing when it is empty). Returns the number of rows inserted or
    updated, as the driver counts them (a conflict that did nothing is not counted).

    ``update_if_equal`` restricts the update to existing rows whose values in these columns
    equal the new row's (``ON CONFLICT ... DO UPDATE ... WHERE t.c = excluded.c``): rows that
    belong to someone else (another scoring run, say) are left as they are.

    ``constants`` are column values shared by every row (e.g. one ``created_at`` stamp), sent
    without copying each row into a new dict; a row's own value for such a column wins (that
    row set then takes the slower path). Within one call a key that appears twice ends
    with the values of its last row, as with a row-by-row upsert."""
    if not rows:
        return 0
    constants = dict(constants or {})
    conflict_columns = tuple(conflict_columns)
    update_columns = tuple(update_columns) if update_columns is not None else ()
    update_if_equal = tuple(update_if_equal)
    dialect = session.get_bind().dialect
    if dialect.name not in ("postgresql", "sqlite"):  # pragma: no cover - only the two supported back ends
        raise NotImplementedError(f"upsert is not implemented for {dialect.name}")
    table: Table = model.__table__
    row_columns = tuple(c for c in rows[0] if c not in constants)
    columns = row_columns + tuple(constants)
    if row_columns and _driver_path_fits(table, rows, columns, dialect, len(constants)):
        sql, processors = _driver_statement(table, columns, conflict_columns, update_columns, update_if_equal, dialect)
        n_row = len(row_columns)
        shared = tuple(_process([tuple(constants.values())], tuple((i - n_row, p) for i, p in processors if i >= n_row))[0])
        per_row = tuple((i, p) for i, p in processors if i < n_row)
        getter = itemgetter(*row_columns)
        connection = session.connection()
        written = 0
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = rows[start : start + CHUNK_ROWS]
            if n_row == 1:
                params = [(getter(r),) for r in chunk]
            else:
                params = [getter(r) for r in chunk]
            if per_row:
                params = _process(params, per_row)
            if shared:
                params = [p + shared for p in params]
            written += connection.exec_driver_sql(sql, params).rowcount
        return written
    if constants:
        rows = [{**constants, **r} for r in rows]

    insert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
    # Core, not the ORM's bulk path, so that the result carries the driver's summed row count
    stmt = insert(table).execution_options(preserve_rowcount=True)
    if update_columns:
        where = and_(*(table.c[c] == stmt.excluded[c] for c in update_if_equal)) if update_if_equal else None
        stmt = stmt.on_conflict_do_update(
            index_elements=list(conflict_columns), set_={c: stmt.excluded[c] for c in update_columns}, where=where
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict_columns))
    written = 0
    for start in range(0, len(rows), CHUNK_ROWS):
        written += session.connection().execute(stmt, list(rows[start : start + CHUNK_ROWS])).rowcount
    return written


def _driver_path_fits(table: Table, rows: Sequence[dict], columns: tuple[str, ...], dialect: Dialect, n_constants: int) -> bool:
    """Every row has the same keys, those keys and the constants are real columns of
    ``table``, and no column left out needs a Python-side default (which only SQLAlchemy's own
    path fills in). Rows that carry a constant's column themselves fall back too."""
    if dialect.paramstyle not in _PLACEHOLDER:
        return False
    if any(c not in table.c for c in columns):
        return False
    if any(c.default is not None for c in table.c if c.key not in columns):
        return False
    keys = rows[0].keys()
    return len(keys) + n_constants == len(columns) and all(r.keys() == keys for r in rows)


@lru_cache(maxsize=64)
def _driver_statement(
    table: Table,
    columns: tuple[str, ...],
    conflict: tuple[str, ...],
    update: tuple[str, ...],
    update_if_equal: tuple[str, ...],
    dialect: Dialect,
) -> tuple[str, tuple[tuple[int, object], ...]]:
    """The ``INSERT ... ON CONFLICT`` text for the driver and the bind processors, as
    ``(position, processor)`` pairs, of the columns whose type has one (e.g. DATETIME as text
    and strict booleans on SQLite)."""
    preparer = dialect.identifier_preparer

    def names(keys: tuple[str, ...]) -> list[str]:
        return [preparer.quote(table.c[k].name) for k in keys]

    sql = (
        f"INSERT INTO {preparer.format_table(table)} ({', '.join(names(columns))}) "
        f"VALUES ({', '.join([_PLACEHOLDER[dialect.paramstyle]] * len(columns))}) ON CONFLICT ({', '.join(names(conflict))}) "
    )
    if update:
        sql += "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in names(update))
        if update_if_equal:
            sql += " WHERE " + " AND ".join(f"{preparer.format_table(table)}.{c} = excluded.{c}" for c in names(update_if_equal))
    else:
        sql += "DO NOTHING"
    processors = tuple(
        (i, proc)
        for i, k in enumerate(columns)
        if (proc := table.c[k].type.dialect_impl(dialect).bind_processor(dialect)) is not None
    )
    return sql, processors


def _process(params: list[tuple], processors: tuple[tuple[int, object], ...]) -> list[tuple]:
    """Apply each column's bind processor; a value that is the same object as the previous
    row's (a shared timestamp, a run id) is converted once."""
    out = []
    last_in: list[object] = [_UNSET] * len(processors)
    last_out: list[object] = [None] * len(processors)
    for row in params:
        values = list(row)
        for j, (i, proc) in enumerate(processors):
            v = values[i]
            if v is not last_in[j]:
                last_in[j], last_out[j] = v, proc(v)
            values[i] = last_out[j]
        out.append(tuple(values))
    return out


_UNSET = object()
