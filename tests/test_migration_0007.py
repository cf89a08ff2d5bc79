"""Revision 0007 upgrades a 0006 database in place on SQLite and PostgreSQL: every row is kept
(the views of 0002 too), ``pixel_logistic`` becomes a valid kind, and each model version gains
``selection_score`` and a CHECK-constrained ``selection_basis``."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from db.engine import downgrade_database, get_engine, upgrade_database

ROWS_0006 = [
    "INSERT INTO studies (id, study_key, patient_id, source, split, image_path, labelled, status, created_at, updated_at) "
    "VALUES (1, 'in.dcm', NULL, 'incoming', 'incoming', '/in.dcm', false, 'active', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    "INSERT INTO model_versions (id, name, kind, config, artifact_path, sha256, status, pinned, created_at) "
    "VALUES (1, 'net', 'densenet121_fpn', '{}', '/net', 'aa', 'champion', false, CURRENT_TIMESTAMP), "
    "(2, 'knn', 'knn_embedding', '{}', '/knn', 'bb', 'candidate', false, CURRENT_TIMESTAMP)",
    "INSERT INTO threshold_sets (id, model_version_id, method, params, split, is_active, created_at) "
    "VALUES (1, 1, 'dynamic_f1', '{}', 'val', true, CURRENT_TIMESTAMP)",
    "INSERT INTO scoring_runs (id, model_version_id, threshold_set_id, status, n_candidates, n_scored, n_skipped, n_failed, started_at) "
    "VALUES (1, 1, 1, 'completed', 1, 1, 0, 0, CURRENT_TIMESTAMP)",
    "INSERT INTO predictions (study_id, model_version_id, finding, probability, decision, threshold_set_id, scoring_run_id, created_at) "
    "VALUES (1, 1, 'Mass', 0.9, true, 1, 1, CURRENT_TIMESTAMP)",
    "INSERT INTO promotions (model_version_id, reason, action, created_at) VALUES (1, 'first', 'promote', CURRENT_TIMESTAMP)",
]
TABLES = ("studies", "model_versions", "threshold_sets", "scoring_runs", "predictions", "promotions")
VIEWS = ("latest_predictions", "flagged_studies")
CLASSICAL = (
    "INSERT INTO model_versions (id, name, kind, config, artifact_path, sha256, status, pinned, created_at, "
    "selection_score, selection_basis) VALUES (3, 'lr', 'pixel_logistic', '{}', '/lr', 'cc', 'candidate', false, "
    "CURRENT_TIMESTAMP, 0.71, 'cross_validation')"
)


def _counts(url: str) -> dict[str, int]:
    with get_engine(url).connect() as conn:
        return {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one() for t in (*TABLES, *VIEWS)}


@pytest.fixture
def url_at_0006(database_url) -> str:
    upgrade_database(database_url, "0006")
    with get_engine(database_url).begin() as conn:
        for sql in ROWS_0006:
            conn.execute(text(sql))
    return database_url


def test_upgrade_keeps_the_rows_and_accepts_the_classical_kind_and_a_selection(url_at_0006):
    url = url_at_0006
    before = _counts(url)
    assert before["latest_predictions"] == 1
    with pytest.raises(IntegrityError), get_engine(url).begin() as conn:  # not a kind before 0007
        conn.execute(text("UPDATE model_versions SET kind = 'pixel_logistic' WHERE id = 2"))
    upgrade_database(url)
    assert _counts(url) == before
    columns = {c["name"] for c in inspect(get_engine(url)).get_columns("model_versions")}
    assert {"selection_score", "selection_basis"} <= columns
    with get_engine(url).begin() as conn:
        conn.execute(text(CLASSICAL))
        conn.execute(text("UPDATE model_versions SET selection_score = 0.8, selection_basis = 'validation' WHERE id = 1"))
        assert conn.execute(text("SELECT name, kind, selection_basis FROM model_versions ORDER BY id")).all() == [
            ("net", "densenet121_fpn", "validation"),
            ("knn", "knn_embedding", None),
            ("lr", "pixel_logistic", "cross_validation"),
        ]
        assert conn.execute(text("SELECT model_version FROM latest_predictions")).scalar_one() == "net"
    for sql in (
        "UPDATE model_versions SET selection_basis = 'test' WHERE id = 2",
        "UPDATE model_versions SET kind = 'resnet' WHERE id = 2",
        "UPDATE model_versions SET status = 'archived' WHERE id = 2",
    ):
        with pytest.raises(IntegrityError), get_engine(url).begin() as conn:
            conn.execute(text(sql))


def test_a_refused_downgrade_from_head_changes_nothing(url_at_0006):
    """Refused before any step runs: from head, 0009 and 0008 are not undone either (SQLite
    would keep their half-done batch rebuilds), and no temporary table is left behind."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from db.engine import DowngradeRefused, alembic_config

    url = url_at_0006
    upgrade_database(url)
    with get_engine(url).begin() as conn:
        conn.execute(text(CLASSICAL))
    tables = set(inspect(get_engine(url)).get_table_names())
    with pytest.raises(DowngradeRefused, match="below 0007: 1 model version"):
        downgrade_database(url, "0006")
    with get_engine(url).connect() as conn:
        head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        assert MigrationContext.configure(conn).get_current_revision() == head
    assert set(inspect(get_engine(url)).get_table_names()) == tables
    assert not [t for t in tables if "tmp" in t]
    assert "trigger" in {c["name"] for c in inspect(get_engine(url)).get_columns("scoring_runs")}


def test_downgrade_to_0006_keeps_the_rows_and_refuses_while_a_classical_version_exists(url_at_0006):
    url = url_at_0006
    before = _counts(url)
    upgrade_database(url, "0007")  # the refusal is 0007's own; later heads have their own downgrade tests
    with get_engine(url).begin() as conn:
        conn.execute(text(CLASSICAL))
    with pytest.raises(RuntimeError, match="pixel_logistic"):
        downgrade_database(url, "0006")
    with get_engine(url).begin() as conn:
        conn.execute(text("DELETE FROM model_versions WHERE id = 3"))
    downgrade_database(url, "0006")
    assert _counts(url) == before
    assert "selection_score" not in {c["name"] for c in inspect(get_engine(url)).get_columns("model_versions")}
    with pytest.raises(IntegrityError), get_engine(url).begin() as conn:
        conn.execute(text("UPDATE model_versions SET kind = 'pixel_logistic' WHERE id = 2"))
