"""Example SQL for users (README, demo and tests use this one list), the demo's summary, and
:func:`run_query` to run any of them. Bound parameters only."""

from __future__ import annotations

from sqlalchemy import text

from db.engine import get_engine

EXAMPLE_QUERIES: dict[str, tuple[str, dict]] = {
    "Studies scored in the latest night, with their flagged findings": (
        """
        SELECT study_key, finding, ROUND(CAST(probability AS NUMERIC), 3) AS probability, model_version
        FROM flagged_studies
        WHERE scoring_run_id = (SELECT MAX(id) FROM batch_runs)
        ORDER BY study_key, probability DESC
        LIMIT :n
        """,
        {"n": 10},
    ),
    "Flag rate per finding per night": (
        """
        SELECT p.scoring_run_id, p.finding,
               ROUND(CAST(AVG(CASE WHEN p.decision THEN 1.0 ELSE 0.0 END) AS NUMERIC), 3) AS flag_rate, COUNT(*) AS studies
        FROM predictions p
        WHERE p.scoring_run_id IN (SELECT id FROM batch_runs)
        GROUP BY p.scoring_run_id, p.finding
        ORDER BY p.scoring_run_id DESC, flag_rate DESC
        LIMIT :n
        """,
        {"n": 14},
    ),
    "Failures of the latest night and their reasons": (
        """
        SELECT s.study_key, f.reason
        FROM scoring_failures f JOIN studies s ON s.id = f.study_id
        WHERE f.scoring_run_id = (SELECT MAX(id) FROM batch_runs)
        ORDER BY s.study_key
        """,
        {},
    ),
    "One study's history across model versions": (
        """
        SELECT mv.name AS model_version, mv.status, p.finding, ROUND(CAST(p.probability AS NUMERIC), 3) AS probability, p.decision
        FROM predictions p
        JOIN studies s ON s.id = p.study_id
        JOIN model_versions mv ON mv.id = p.model_version_id
        WHERE s.study_key = :study_key
        ORDER BY p.finding, mv.id
        """,
        {"study_key": "90000000_000.dcm"},
    ),
    "Per-class metrics of the champion on the test split": (
        """
        SELECT cm.finding, ROUND(CAST(cm.auroc AS NUMERIC), 3) AS auroc, ROUND(CAST(cm.f1 AS NUMERIC), 3) AS f1,
               ROUND(CAST(cm.threshold AS NUMERIC), 2) AS threshold, cm.tp, cm.fp, cm.fn
        FROM class_metrics cm
        JOIN evaluations e ON e.id = cm.evaluation_id
        JOIN model_versions mv ON mv.id = e.model_version_id
        WHERE mv.status = :status AND e.split = :split
        ORDER BY cm.auroc DESC NULLS LAST
        """,
        {"status": "champion", "split": "test"},
    ),
    "Latest prediction per study and finding (the view), strongest Effusion calls": (
        """
        SELECT study_key, ROUND(CAST(probability AS NUMERIC), 3) AS probability, decision, model_version
        FROM latest_predictions
        WHERE finding = :finding
        ORDER BY probability DESC
        LIMIT :n
        """,
        {"finding": "Effusion", "n": 5},
    ),
    "On-demand requests (cxr api), newest first, with their flagged findings": (
        """
        SELECT scoring_run_id, requested_at, study_key, finding, ROUND(CAST(probability AS NUMERIC), 3) AS probability,
               model_version
        FROM on_demand_predictions
        WHERE decision
        ORDER BY scoring_run_id DESC, probability DESC
        LIMIT :n
        """,
        {"n": 10},
    ),
}

#: The three the demo prints.
DEMO_QUERIES = (
    "Per-class metrics of the champion on the test split",
    "Latest prediction per study and finding (the view), strongest Effusion calls",
    "Failures of the latest night and their reasons",
)

#: The demo's model-comparison table: every model version with the figure it was chosen on
#: (validation or cross-validation) beside its latest evaluation on the test split, oldest first.
MODEL_COMPARISON = (
    """
    SELECT mv.name AS model, mv.kind, mv.status, mv.selection_basis AS "chosen on",
           ROUND(CAST(mv.selection_score AS NUMERIC), 3) AS "selection figure",
           ROUND(CAST(e.macro_auroc AS NUMERIC), 3) AS "test macro AUROC",
           ROUND(CAST(e.macro_f1 AS NUMERIC), 3) AS "test macro F1", ROUND(CAST(e.micro_f1 AS NUMERIC), 3) AS "test micro F1"
    FROM model_versions mv
    LEFT JOIN evaluations e ON e.id = (
        SELECT MAX(t.id) FROM evaluations t WHERE t.model_version_id = mv.id AND t.split = :split
    )
    WHERE mv.selection_score IS NOT NULL OR e.id IS NOT NULL
    ORDER BY mv.id
    """,
    {"split": "test"},
)
#: The newest batch scoring run's counts (on-demand requests are runs of one study each).
LATEST_SCORING_RUN = (
    "SELECT id, n_candidates, n_scored, n_failed, n_skipped FROM batch_runs ORDER BY id DESC LIMIT :n",
    {"n": 1},
)


def run_query(database_url: str, sql: str, params: dict | None = None) -> tuple[list[str], list[tuple]]:
    """(column names, rows) of one read-only query."""
    with get_engine(database_url).connect() as connection:
        result = connection.execute(text(sql), params or {})
        return list(result.keys()), [tuple(row) for row in result.all()]
