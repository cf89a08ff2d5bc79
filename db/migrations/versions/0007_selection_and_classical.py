"""The classical baseline becomes a model kind (``pixel_logistic``), and every model version keeps
the figure it was chosen on: ``selection_score`` (the configured metric on the validation split,
or the mean over patient-grouped cross-validation folds) and ``selection_basis``
(``'validation'`` or ``'cross_validation'``; NULL for a version never ranked).

On SQLite the ``model_versions`` table is rebuilt in batch mode to change its kind CHECK; the
views of 0002 name it, so they are set aside and recreated from their stored SQL (as in 0006),
and :mod:`db.migrations.env` runs the rebuild with foreign keys off. PostgreSQL alters the
table in place. Every row is kept.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

KINDS_BEFORE = ("densenet121", "densenet121_fpn", "knn_embedding", "mlp_embedding")
KINDS_AFTER = (*KINDS_BEFORE, "pixel_logistic")
BASES = ("cross_validation", "validation")


def _in_sql(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in sorted(values))})"


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
    with _views_set_aside(op.get_bind()), op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("selection_score", sa.Float(), nullable=True))
        batch.add_column(sa.Column("selection_basis", sa.String(length=16), nullable=True))
        batch.drop_constraint(op.f("ck_model_versions_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_model_versions_kind"), _in_sql("kind", KINDS_AFTER))
        batch.create_check_constraint(op.f("ck_model_versions_selection_basis"), _in_sql("selection_basis", BASES))


def downgrade_refusal(connection) -> str | None:
    """Why this revision cannot be undone now (``db.engine.downgrade_database`` asks first)."""
    classical = connection.execute(sa.text("SELECT COUNT(*) FROM model_versions WHERE kind = 'pixel_logistic'")).scalar_one()
    if classical:
        return f"{classical} model version(s) of kind 'pixel_logistic' exist (revision 0006 has no such kind)"
    return None


def downgrade() -> None:
    connection = op.get_bind()
    if reason := downgrade_refusal(connection):
        raise RuntimeError(f"cannot downgrade below 0007: {reason}")
    with _views_set_aside(connection), op.batch_alter_table("model_versions") as batch:
        batch.drop_constraint(op.f("ck_model_versions_selection_basis"), type_="check")
        batch.drop_constraint(op.f("ck_model_versions_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_model_versions_kind"), _in_sql("kind", KINDS_BEFORE))
        batch.drop_column("selection_basis")
        batch.drop_column("selection_score")
