"""Revision 0006 upgrades a database that already holds a night's worth of rows, in place, on
SQLite and PostgreSQL: every row is kept (SQLite rebuilds the tables, which must neither
cascade-delete the rows that reference them nor break the views of 0002), the new columns are
there, and from then on a value outside its vocabulary is refused by the database."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from db.engine import downgrade_database, get_engine, upgrade_database

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


def _counts(url: str) -> dict[str, int]:
    with get_engine(url).connect() as conn:
        return {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one() for t in (*TABLES, *VIEWS)}


@pytest.fixture
def url_at_0005(database_url) -> str:
    upgrade_database(database_url, "0005")
    with get_engine(database_url).begin() as conn:
        for sql in ROWS_0005:
            conn.execute(text(sql))
    return database_url


def test_upgrade_keeps_every_row_then_refuses_bad_values(url_at_0005):
    url = url_at_0005
    before = _counts(url)
    assert before["latest_predictions"] == before["flagged_studies"] == 1
    upgrade_database(url)
    assert _counts(url) == before
    columns = inspect(get_engine(url))
    assert "arrays_path" in {c["name"] for c in columns.get_columns("evaluations")}
    assert "images_per_second" in {c["name"] for c in columns.get_columns("epoch_metrics")}
    assert {c["name"] for c in columns.get_check_constraints("studies")} == {"ck_studies_status", "ck_studies_split"}
    with get_engine(url).connect() as conn:  # the rows are the same rows
        assert conn.execute(text("SELECT study_key, content_hash FROM studies WHERE id = 1")).one() == (
            "00000001_000.png",
            "12:34",
        )
        assert conn.execute(text("SELECT study_key, probability FROM latest_predictions")).one() == ("in.dcm", 0.9)
    for sql in (
        "UPDATE studies SET status = 'deleted' WHERE id = 1",
        "UPDATE model_versions SET kind = 'resnet' WHERE id = 1",
        "UPDATE model_versions SET status = 'archived' WHERE id = 2",
        "UPDATE scoring_runs SET status = 'done'",
        "UPDATE refresh_runs SET status = 'ok'",
        "UPDATE training_runs SET status = 'ok'",
        "UPDATE promotions SET action = 'demote'",
        "UPDATE threshold_sets SET method = 'magic'",
        "UPDATE studies SET split = 'holdout' WHERE id = 1",
    ):
        with pytest.raises(IntegrityError), get_engine(url).begin() as conn:
            conn.execute(text(sql))
    assert _counts(url) == before


def test_downgrade_to_0005_keeps_the_rows_and_drops_the_checks(url_at_0005):
    url = url_at_0005
    before = _counts(url)
    upgrade_database(url)
    downgrade_database(url, "0005")
    assert _counts(url) == before
    assert inspect(get_engine(url)).get_check_constraints("studies") == []
    with get_engine(url).begin() as conn:
        conn.execute(text("UPDATE studies SET status = 'anything' WHERE id = 1"))  # free text again, as before 0006


def test_upgrade_stops_with_the_values_it_cannot_keep(url_at_0005):
    with get_engine(url_at_0005).begin() as conn:
        conn.execute(text("UPDATE model_versions SET kind = 'k' WHERE id = 2"))
    with pytest.raises(RuntimeError, match=r"model_versions\.kind holds \['k'\]"):
        upgrade_database(url_at_0005)
    assert _counts(url_at_0005)["model_versions"] == 2
