"""Guards from the adversarial pass (issue 16): bounded scoring retries per study
(``scoring_attempts``, ``last_error``, status ``failed``), a heartbeat and an error on every kind
of run (one stale-run rule, :mod:`db.runs`), the folder and resume point of a training run, and
``scoring_claims``: the studies a scoring run is working on, so an overlapping run does not
repeat the inference; ``superseded_predictions``: the predictions of an image that changed.

SQLite rebuilds ``studies`` for its new CHECK (batch mode, views of 0002 set aside and recreated
from their stored SQL, as in 0006); PostgreSQL replaces the constraint with ``ALTER TABLE``.

Revision ID: 0008
Revises: 0006
"""

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

STATUSES_BEFORE = ("active", "quarantined")
STATUSES_AFTER = ("active", "failed", "quarantined")


def _in_sql(values: tuple[str, ...]) -> str:
    return f"status IN ({', '.join(repr(v) for v in sorted(values))})"


@contextmanager
def _views_set_aside(connection: sa.Connection) -> Iterator[None]:
    if connection.dialect.name != "sqlite":
        yield
        return
    views = connection.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'view' ORDER BY name")).all()
    for name, _ in views:
        op.execute(f'DROP VIEW "{name}"')
    yield
    for _, sql in views:
        op.execute(sql)


def _study_status_check(values: tuple[str, ...]) -> None:
    with _views_set_aside(op.get_bind()), op.batch_alter_table("studies") as batch:
        batch.drop_constraint(op.f("ck_studies_status"), type_="check")
        batch.create_check_constraint(op.f("ck_studies_status"), _in_sql(values))


def upgrade() -> None:
    op.add_column("studies", sa.Column("scoring_attempts", sa.Integer(), server_default="0", nullable=False))
    op.add_column("studies", sa.Column("last_error", sa.Text(), nullable=True))
    op.add_column("refresh_runs", sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    for name, type_ in (("heartbeat_at", sa.DateTime(timezone=True)), ("error", sa.Text()), ("output_dir", sa.Text())):
        op.add_column("training_runs", sa.Column(name, type_, nullable=True))
    op.add_column("training_runs", sa.Column("resumed_from", sa.Text(), nullable=True))
    op.add_column("scoring_runs", sa.Column("error", sa.Text(), nullable=True))
    op.create_table(
        "scoring_claims",
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("scoring_run_id", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_scoring_claims_study_id_studies"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["scoring_run_id"],
            ["scoring_runs.id"],
            name=op.f("fk_scoring_claims_scoring_run_id_scoring_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("study_id", name=op.f("pk_scoring_claims")),
    )
    op.create_index(op.f("ix_scoring_claims_scoring_run_id"), "scoring_claims", ["scoring_run_id"])
    op.create_table(
        "superseded_predictions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("finding", sa.String(length=32), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("decision", sa.Boolean(), nullable=False),
        sa.Column("threshold_set_id", sa.Integer(), nullable=False),
        sa.Column("scoring_run_id", sa.Integer(), nullable=True),
        sa.Column("content_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_superseded_predictions_study_id_studies"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"], ["model_versions.id"], name=op.f("fk_superseded_predictions_model_version_id_model_versions")
        ),
        sa.ForeignKeyConstraint(
            ["threshold_set_id"], ["threshold_sets.id"], name=op.f("fk_superseded_predictions_threshold_set_id_threshold_sets")
        ),
        sa.ForeignKeyConstraint(
            ["scoring_run_id"], ["scoring_runs.id"], name=op.f("fk_superseded_predictions_scoring_run_id_scoring_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_superseded_predictions")),
    )
    op.create_index(op.f("ix_superseded_predictions_study_id"), "superseded_predictions", ["study_id"])
    _study_status_check(STATUSES_AFTER)


def downgrade() -> None:
    op.execute("UPDATE studies SET status = 'active' WHERE status = 'failed'")
    _study_status_check(STATUSES_BEFORE)
    op.drop_index(op.f("ix_superseded_predictions_study_id"), table_name="superseded_predictions")
    op.drop_table("superseded_predictions")
    op.drop_index(op.f("ix_scoring_claims_scoring_run_id"), table_name="scoring_claims")
    op.drop_table("scoring_claims")
    op.drop_column("scoring_runs", "error")
    for name in ("resumed_from", "output_dir", "error", "heartbeat_at"):
        op.drop_column("training_runs", name)
    op.drop_column("refresh_runs", "heartbeat_at")
    op.drop_column("studies", "last_error")
    op.drop_column("studies", "scoring_attempts")
