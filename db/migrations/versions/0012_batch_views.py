"""The views for "the night" count batch scoring runs only; on-demand requests get their own view.

Since 0009 a scoring run is ``batch`` (a night, ``cxr score``, the score-now deployment) or
``on_demand`` (one study posted to ``cxr api``). ``flagged_studies`` of 0002 predates that: after
a night and a few uploads, "the latest night" (``MAX(scoring_run_id)``) was one uploaded study.
Now:

- ``flagged_studies``: every positive decision of a batch run (its columns unchanged);
- ``batch_runs``: the batch scoring runs, ``SELECT MAX(id) FROM batch_runs`` being the latest night;
- ``on_demand_predictions``: every prediction an on-demand request wrote, with the request's
  run id and time.

``latest_predictions`` stays as it is: the newest prediction per study and finding, whatever
wrote it (a study scored again keeps one row per model version and finding).

Views are dropped and created again; no table changes, so nothing is rebuilt on SQLite.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

FLAGGED_STUDIES = """
CREATE VIEW flagged_studies AS
SELECT r.id AS scoring_run_id, r.started_at AS run_started_at, s.study_key, s.patient_id, s.age, s.sex, s.view,
       p.finding, p.probability, mv.name AS model_version
FROM predictions p
JOIN scoring_runs r ON r.id = p.scoring_run_id
JOIN studies s ON s.id = p.study_id
JOIN model_versions mv ON mv.id = p.model_version_id
WHERE p.decision AND r.trigger = 'batch'
"""

BATCH_RUNS = """
CREATE VIEW batch_runs AS
SELECT r.id, r.status, r.started_at, r.finished_at, r.n_candidates, r.n_scored, r.n_failed, r.n_skipped,
       mv.name AS model_version, r.flow_run_id
FROM scoring_runs r
JOIN model_versions mv ON mv.id = r.model_version_id
WHERE r.trigger = 'batch'
"""

ON_DEMAND_PREDICTIONS = """
CREATE VIEW on_demand_predictions AS
SELECT r.id AS scoring_run_id, r.started_at AS requested_at, s.study_key, p.finding, p.probability, p.decision,
       mv.name AS model_version, p.threshold_set_id
FROM predictions p
JOIN scoring_runs r ON r.id = p.scoring_run_id
JOIN studies s ON s.id = p.study_id
JOIN model_versions mv ON mv.id = p.model_version_id
WHERE r.trigger = 'on_demand'
"""

#: ``flagged_studies`` as 0002 defined it, for the downgrade.
FLAGGED_STUDIES_0002 = FLAGGED_STUDIES.replace(" AND r.trigger = 'batch'", "")


def upgrade() -> None:
    op.execute("DROP VIEW IF EXISTS flagged_studies")
    op.execute(FLAGGED_STUDIES)
    op.execute(BATCH_RUNS)
    op.execute(ON_DEMAND_PREDICTIONS)


def downgrade() -> None:
    for view in ("on_demand_predictions", "batch_runs", "flagged_studies"):
        op.execute(f"DROP VIEW IF EXISTS {view}")
    op.execute(FLAGGED_STUDIES_0002)
