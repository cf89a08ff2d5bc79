"""Bootstrap intervals, calibration and subgroup metrics on evaluations; pinning and actions in the registry.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

EVALUATION_COLUMNS = (
    ("macro_auroc_ci_low", sa.Float()),
    ("macro_auroc_ci_high", sa.Float()),
    ("macro_f1_ci_low", sa.Float()),
    ("macro_f1_ci_high", sa.Float()),
    ("n_bootstrap", sa.Integer()),
    ("mean_ece", sa.Float()),
    ("calibration_method", sa.String(length=16)),
    ("calibration", sa.JSON()),
    ("bundle_path", sa.Text()),
)
CLASS_METRIC_COLUMNS = ("auroc_ci_low", "auroc_ci_high", "f1_ci_low", "f1_ci_high", "ece", "brier_calibrated", "ece_calibrated")


# Plain ALTER TABLE ADD/DROP COLUMN (SQLite >= 3.35 has both): batch mode would rebuild
# model_versions, which the views of 0002 reference.


def upgrade() -> None:
    for name, type_ in EVALUATION_COLUMNS:
        op.add_column("evaluations", sa.Column(name, type_, nullable=True))
    for name in CLASS_METRIC_COLUMNS:
        op.add_column("class_metrics", sa.Column(name, sa.Float(), nullable=True))
    op.add_column("model_versions", sa.Column("pinned", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column("promotions", sa.Column("action", sa.String(length=16), server_default="promote", nullable=False))
    op.create_table(
        "subgroup_metrics",
        sa.Column("evaluation_id", sa.Integer(), nullable=False),
        sa.Column("attribute", sa.String(length=16), nullable=False),
        sa.Column("group_name", sa.String(length=32), nullable=False),
        sa.Column("n_studies", sa.Integer(), nullable=False),
        sa.Column("n_positive_labels", sa.Integer(), nullable=True),
        *(
            sa.Column(name, sa.Float(), nullable=True)
            for name in ("macro_auroc", "macro_f1", "micro_f1", "exact_match", "hamming_loss", "mean_brier", "mean_ece")
        ),
        sa.ForeignKeyConstraint(
            ["evaluation_id"], ["evaluations.id"], name=op.f("fk_subgroup_metrics_evaluation_id_evaluations"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("evaluation_id", "attribute", "group_name", name=op.f("pk_subgroup_metrics")),
    )


def downgrade() -> None:
    op.drop_table("subgroup_metrics")
    op.drop_column("promotions", "action")
    op.drop_column("model_versions", "pinned")
    for name in reversed(CLASS_METRIC_COLUMNS):
        op.drop_column("class_metrics", name)
    for name, _ in reversed(EVALUATION_COLUMNS):
        op.drop_column("evaluations", name)
