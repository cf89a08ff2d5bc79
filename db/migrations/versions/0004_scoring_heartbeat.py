"""Heartbeat of scoring runs: a run whose process died stops beating and is later marked abandoned.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


# Plain ALTER TABLE ADD/DROP COLUMN, as in 0003: batch mode would rebuild scoring_runs, which
# the views of 0002 reference.


def upgrade() -> None:
    op.add_column("scoring_runs", sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("scoring_runs", "heartbeat_at")
