"""Scoring runs record the process that owns them (issue 22): ``host`` and ``pid``. The next
plan on the same host marks a ``running`` run whose process is gone ``abandoned`` at once and
frees its claims, instead of waiting for its heartbeat to go stale (an hour by default).

Plain nullable columns: SQLite adds them without rebuilding the table.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("scoring_runs", sa.Column("host", sa.String(255), nullable=True))
    op.add_column("scoring_runs", sa.Column("pid", sa.Integer(), nullable=True))


def downgrade() -> None:
    # a plain DROP COLUMN (SQLite 3.35+): batch mode would rebuild the table under the views of 0002
    op.drop_column("scoring_runs", "pid")
    op.drop_column("scoring_runs", "host")
