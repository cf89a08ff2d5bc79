"""Scoring runs say what started them: ``trigger`` is ``batch`` (the nightly run, ``cxr score``,
the score-now deployment) or ``on_demand`` (one study posted to the HTTP service, ``cxr api``).
Existing runs are batch runs; the column is CHECK-constrained like every other vocabulary.
``studies.content_hash`` gets an index: an uploaded image finds its study by its sha256.

SQLite cannot add a constraint to a table: batch mode rebuilds ``scoring_runs``; the views of
0002 name it, and SQLite refuses to rename a table while a view names a missing one, so the
views are set aside and recreated from their own stored SQL (as in 0006).

Revision ID: 0009
Revises: 0006
"""

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TRIGGERS = ("batch", "on_demand")


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
    op.create_index(op.f("ix_studies_content_hash"), "studies", ["content_hash"])
    with _views_set_aside(op.get_bind()):
        with op.batch_alter_table("scoring_runs") as batch:
            batch.add_column(sa.Column("trigger", sa.String(16), nullable=False, server_default="batch"))
            batch.create_check_constraint(op.f("ck_scoring_runs_trigger"), f"trigger IN ({', '.join(repr(v) for v in TRIGGERS)})")


def downgrade() -> None:
    with _views_set_aside(op.get_bind()):
        with op.batch_alter_table("scoring_runs") as batch:
            batch.drop_constraint(op.f("ck_scoring_runs_trigger"), type_="check")
            batch.drop_column("trigger")
    op.drop_index(op.f("ix_studies_content_hash"), table_name="studies")
