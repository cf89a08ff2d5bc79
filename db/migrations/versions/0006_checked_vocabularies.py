"""Statuses, kinds, actions, splits and threshold methods become CHECK-constrained; evaluations
keep the path of their own arrays (``arrays_path``); epoch metrics keep the epoch's throughput
(``images_per_second``, which the training loop always reported and the table used to drop).

An existing database is upgraded in place and keeps every row. A value outside its vocabulary
stops the upgrade with the table, column and values named (fix them, then upgrade again), so
the constraint never fails half-way.

SQLite cannot add a constraint to a table: batch mode rebuilds each table (new table, copy,
drop, rename). Two things around that: the views of 0002 name these tables, and SQLite refuses
to rename a table while a view names a missing one, so the views are set aside and recreated
from their own stored SQL; and dropping a table that others reference with ``ON DELETE
CASCADE`` would delete their rows, so :mod:`db.migrations.env` runs every SQLite migration
with foreign keys off (and checks them before committing). PostgreSQL adds the constraints
with plain ``ALTER TABLE``.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# The vocabularies as of this revision (a later change of an enum is a later migration).
RUN = ("completed", "failed", "running")
VOCABULARIES: dict[str, dict[str, tuple[str, ...]]] = {
    "studies": {"status": ("active", "quarantined"), "split": ("incoming", "test", "train", "val")},
    "refresh_runs": {"status": RUN},
    "model_versions": {
        "status": ("candidate", "champion", "retired"),
        "kind": ("densenet121", "densenet121_fpn", "knn_embedding", "mlp_embedding"),
    },
    "training_runs": {"status": RUN, "architecture": ("densenet121", "densenet121_fpn")},
    "threshold_sets": {"method": ("dynamic_f1", "fixed", "fixed_sensitivity", "precision_constrained_f1", "youden")},
    "scoring_runs": {"status": ("abandoned", "completed", "failed", "running")},
    "promotions": {"action": ("pin", "promote", "rollback", "unpin")},
}


def _in_sql(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in sorted(values))})"


def _refuse_unknown_values(connection: sa.Connection) -> None:
    problems = []
    for table, columns in VOCABULARIES.items():
        for column, values in columns.items():
            found = (
                connection.execute(sa.text(f"SELECT DISTINCT {column} FROM {table} WHERE NOT ({_in_sql(column, values)})"))
                .scalars()
                .all()
            )
            if found:
                problems.append(f"{table}.{column} holds {sorted(found)!r} (allowed: {', '.join(values)})")
    if problems:
        raise RuntimeError("cannot add the CHECK constraints of revision 0006: " + "; ".join(problems))


@contextmanager
def _views_set_aside(connection: sa.Connection) -> Iterator[None]:
    """On SQLite, drop every view for the duration and recreate it from its stored SQL."""
    if connection.dialect.name != "sqlite":
        yield
        return
    views = connection.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'view' ORDER BY name")).all()
    for name, _ in views:
        op.execute(f'DROP VIEW "{name}"')
    yield
    for _, sql in views:
        op.execute(sql)


def upgrade() -> None:
    connection = op.get_bind()
    _refuse_unknown_values(connection)
    op.add_column("evaluations", sa.Column("arrays_path", sa.Text(), nullable=True))
    op.add_column("epoch_metrics", sa.Column("images_per_second", sa.Float(), nullable=True))
    with _views_set_aside(connection):
        for table, columns in VOCABULARIES.items():
            with op.batch_alter_table(table) as batch:
                for column, values in columns.items():
                    batch.create_check_constraint(op.f(f"ck_{table}_{column}"), _in_sql(column, values))


def downgrade() -> None:
    connection = op.get_bind()
    with _views_set_aside(connection):
        for table, columns in VOCABULARIES.items():
            with op.batch_alter_table(table) as batch:
                for column in columns:
                    batch.drop_constraint(op.f(f"ck_{table}_{column}"), type_="check")
    op.drop_column("epoch_metrics", "images_per_second")
    op.drop_column("evaluations", "arrays_path")
