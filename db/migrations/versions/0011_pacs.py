"""The PACS link (issue 23): ``pacs_cursors`` (where the next search starts), ``pacs_instances``
(every instance the pull saw, its outcome and the study it became) and ``pacs_objects`` (every
report written back, its delivery state). New tables only: no view or table is rebuilt.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# The vocabularies as of this revision (a later change of an enum is a later migration).
INSTANCE_STATUSES = ("failed", "registered", "retry", "skipped")
OBJECT_STATUSES = ("failed", "pending", "sent")
OBJECT_KINDS = ("heatmap", "sr")


#: Each current prediction of a study pulled from a PACS, beside the PACS identifiers a
#: radiologist searches by (accession number, Study Instance UID). Built on the tables only, so
#: a later change of the other views never has to touch it.
PACS_PREDICTIONS = """
CREATE VIEW pacs_predictions AS
SELECT i.accession_number, i.study_instance_uid, i.series_instance_uid, i.sop_instance_uid,
       p.study_id, s.study_key, p.finding, p.probability, p.decision,
       mv.name AS model_version, p.threshold_set_id, p.scoring_run_id, p.created_at
FROM predictions p
JOIN studies s ON s.id = p.study_id
JOIN pacs_instances i ON i.study_id = p.study_id
JOIN model_versions mv ON mv.id = p.model_version_id
WHERE p.id = (
    SELECT p2.id FROM predictions p2
    WHERE p2.study_id = p.study_id AND p2.finding = p.finding
    ORDER BY p2.created_at DESC, p2.id DESC
    LIMIT 1
)
"""


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "pacs_cursors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(256), nullable=False),
        sa.Column("searched_from", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pacs_cursors")),
        sa.UniqueConstraint("source", name=op.f("uq_pacs_cursors_source")),
    )
    op.create_table(
        "pacs_instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(256), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=True),
        sa.Column("accession_number", sa.String(64), nullable=True),
        sa.Column("modality", sa.String(16), nullable=True),
        sa.Column("view", sa.String(16), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(_one_of("status", INSTANCE_STATUSES), name=op.f("ck_pacs_instances_status")),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_pacs_instances_study_id_studies"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pacs_instances")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_pacs_instances_sop_instance_uid")),
    )
    op.create_index(op.f("ix_pacs_instances_study_instance_uid"), "pacs_instances", ["study_instance_uid"])
    op.create_index(op.f("ix_pacs_instances_study_id"), "pacs_instances", ["study_id"])
    op.create_table(
        "pacs_objects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pacs_instance_id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("threshold_set_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(_one_of("status", OBJECT_STATUSES), name=op.f("ck_pacs_objects_status")),
        sa.CheckConstraint(_one_of("kind", OBJECT_KINDS), name=op.f("ck_pacs_objects_kind")),
        sa.ForeignKeyConstraint(
            ["pacs_instance_id"],
            ["pacs_instances.id"],
            name=op.f("fk_pacs_objects_pacs_instance_id_pacs_instances"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"], ["model_versions.id"], name=op.f("fk_pacs_objects_model_version_id_model_versions")
        ),
        sa.ForeignKeyConstraint(
            ["threshold_set_id"], ["threshold_sets.id"], name=op.f("fk_pacs_objects_threshold_set_id_threshold_sets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pacs_objects")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_pacs_objects_sop_instance_uid")),
    )
    op.create_index(op.f("ix_pacs_objects_pacs_instance_id"), "pacs_objects", ["pacs_instance_id"])
    op.execute(PACS_PREDICTIONS)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS pacs_predictions")
    op.drop_table("pacs_objects")
    op.drop_table("pacs_instances")
    op.drop_table("pacs_cursors")
