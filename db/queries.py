"""Example SQL for users (README, demo and tests use this one list). Bound parameters only."""

from __future__ import annotations

EXAMPLE_QUERIES: dict[str, tuple[str, dict]] = {
    "Studies scored in the latest night, with their flagged findings": (
        """
        SELECT study_key, finding, ROUND(CAST(probability AS NUMERIC), 3) AS probability, model_version
        FROM flagged_studies
        WHERE scoring_run_id = (SELECT MAX(id) FROM scoring_runs)
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
        WHERE p.scoring_run_id IS NOT NULL
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
        WHERE f.scoring_run_id = (SELECT MAX(id) FROM scoring_runs)
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
}

#: The three the demo prints.
DEMO_QUERIES = (
    "Per-class metrics of the champion on the test split",
    "Latest prediction per study and finding (the view), strongest Effusion calls",
    "Failures of the latest night and their reasons",
)
