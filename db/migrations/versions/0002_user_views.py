"""SQL views for users: the latest prediction per study and finding, and flagged studies.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

LATEST_PREDICTIONS = """
CREATE VIEW latest_predictions AS
SELECT p.study_id, s.study_key, p.finding, p.probability, p.decision,
       mv.name AS model_version, mv.status AS model_status, p.threshold_set_id, p.scoring_run_id, p.created_at
FROM predictions p
JOIN studies s ON s.id = p.study_id
JOIN model_versions mv ON mv.id = p.model_version_id
WHERE p.id = (
    SELECT p2.id FROM predictions p2
    WHERE p2.study_id = p.study_id AND p2.finding = p.finding
    ORDER BY p2.created_at DESC, p2.id DESC
    LIMIT 1
)
"""

FLAGGED_STUDIES = """
CREATE VIEW flagged_studies AS
SELECT r.id AS scoring_run_id, r.started_at AS run_started_at, s.study_key, s.patient_id, s.age, s.sex, s.view,
       p.finding, p.probability, mv.name AS model_version
FROM predictions p
JOIN scoring_runs r ON r.id = p.scoring_run_id
JOIN studies s ON s.id = p.study_id
JOIN model_versions mv ON mv.id = p.model_version_id
WHERE p.decision
"""


def upgrade() -> None:
    op.execute(LATEST_PREDICTIONS)
    op.execute(FLAGGED_STUDIES)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS flagged_studies")
    op.execute("DROP VIEW IF EXISTS latest_predictions")
