"""A night's worth of rows written at revision 0005 (every table of the time, both views), shared
by the migration tests of 0006 and later: each upgrades a database that holds them."""

from __future__ import annotations

from sqlalchemy import text

from db.engine import get_engine, upgrade_database

ROWS_0005 = [
    "INSERT INTO studies (id, study_key, patient_id, source, split, image_path, content_hash, labelled, status, created_at, updated_at) "
    "VALUES (1, '00000001_000.png', '1', 'synthetic', 'train', '/a.png', '12:34', true, 'active', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP), "
    "(2, 'in.dcm', NULL, 'incoming', 'incoming', '/in.dcm', NULL, false, 'active', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    "INSERT INTO study_labels (study_id, finding, value) VALUES (1, 'Mass', 1), (1, 'Effusion', 1)",
    "INSERT INTO refresh_runs (id, source, location, started_at, n_rows, n_added, n_updated, n_unchanged, n_quarantined, status) "
    "VALUES (1, 'synthetic', '/data', CURRENT_TIMESTAMP, 2, 2, 0, 0, 1, 'completed')",
    "INSERT INTO quarantined_rows (refresh_run_id, source, row_key, reason, created_at) "
    "VALUES (1, 'synthetic', 'x.png', 'missing image file', CURRENT_TIMESTAMP)",
    "INSERT INTO model_versions (id, name, kind, config, artifact_path, sha256, status, pinned, created_at) "
    "VALUES (1, 'net', 'densenet121_fpn', '{}', '/net', 'aa', 'champion', false, CURRENT_TIMESTAMP), "
    "(2, 'knn', 'knn_embedding', '{}', '/knn', 'bb', 'candidate', false, CURRENT_TIMESTAMP)",
    "INSERT INTO training_runs (id, model_version_id, architecture, config, status, started_at) "
    "VALUES (1, 1, 'densenet121_fpn', '{}', 'completed', CURRENT_TIMESTAMP)",
    "INSERT INTO epoch_metrics (training_run_id, epoch, train_loss, val_loss, mean_precision, mean_recall, macro_f1, learning_rate, seconds) "
    "VALUES (1, 1, 0.7, 0.6, 0.3, 0.3, 0.3, 0.001, 2.0)",
    "INSERT INTO threshold_sets (id, model_version_id, method, params, split, is_active, created_at) "
    "VALUES (1, 1, 'dynamic_f1', '{}', 'val', true, CURRENT_TIMESTAMP)",
    "INSERT INTO thresholds (threshold_set_id, finding, threshold) VALUES (1, 'Mass', 0.5)",
    "INSERT INTO evaluations (id, model_version_id, threshold_set_id, split, n_studies, macro_f1, micro_f1, macro_precision, "
    "micro_precision, macro_recall, micro_recall, exact_match, hamming_loss, accuracy, mean_brier, created_at) "
    "VALUES (1, 1, 1, 'test', 1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.1, 0.2, 0.8, 0.1, CURRENT_TIMESTAMP)",
    "INSERT INTO class_metrics (evaluation_id, finding, n_positive, f1, precision, recall, specificity, npv, brier, threshold, tp, fp, tn, fn) "
    "VALUES (1, 'Mass', 1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.1, 0.5, 1, 0, 0, 0)",
    "INSERT INTO scoring_runs (id, model_version_id, threshold_set_id, status, n_candidates, n_scored, n_skipped, n_failed, started_at) "
    "VALUES (1, 1, 1, 'completed', 1, 1, 0, 0, CURRENT_TIMESTAMP)",
    "INSERT INTO predictions (study_id, model_version_id, finding, probability, decision, threshold_set_id, scoring_run_id, created_at) "
    "VALUES (2, 1, 'Mass', 0.9, true, 1, 1, CURRENT_TIMESTAMP)",
    "INSERT INTO scoring_failures (scoring_run_id, study_id, reason, created_at) VALUES (1, 1, 'empty file', CURRENT_TIMESTAMP)",
    "INSERT INTO promotions (model_version_id, reason, action, created_at) VALUES (1, 'first', 'promote', CURRENT_TIMESTAMP)",
]
TABLES = (
    "studies",
    "study_labels",
    "refresh_runs",
    "quarantined_rows",
    "model_versions",
    "training_runs",
    "epoch_metrics",
    "threshold_sets",
    "thresholds",
    "evaluations",
    "class_metrics",
    "scoring_runs",
    "predictions",
    "scoring_failures",
    "promotions",
)
VIEWS = ("latest_predictions", "flagged_studies")


def counts(url: str) -> dict[str, int]:
    with get_engine(url).connect() as conn:
        return {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one() for t in (*TABLES, *VIEWS)}


def database_with_rows(url: str, revision: str) -> str:
    """``url`` migrated to 0005, :data:`ROWS_0005` written, then migrated on to ``revision``."""
    upgrade_database(url, "0005")
    with get_engine(url).begin() as conn:
        for sql in ROWS_0005:
            conn.execute(text(sql))
    if revision != "0005":
        upgrade_database(url, revision)
    return url
