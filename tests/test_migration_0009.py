"""Revision 0009 (``scoring_runs.trigger``) upgrades a database at 0006 that holds rows, in place,
on SQLite and PostgreSQL: every row is kept, existing runs become ``batch`` runs, the views of
0002 still answer, an unknown trigger is refused, and the downgrade gives the rows back."""

from __future__ import annotations

import pytest
from migration_rows import TABLES, VIEWS, counts, database_with_rows
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from db.engine import downgrade_database, get_engine, upgrade_database


@pytest.fixture
def url_at_0006(database_url) -> str:
    return database_with_rows(database_url, "0006")


def test_upgrade_marks_existing_runs_batch_and_refuses_unknown_triggers(url_at_0006):
    url = url_at_0006
    before = counts(url)
    assert before["latest_predictions"] == 1
    upgrade_database(url, "0009")
    assert counts(url) == before
    assert "ix_studies_content_hash" in {i["name"] for i in inspect(get_engine(url)).get_indexes("studies")}
    checks = {c["name"] for c in inspect(get_engine(url)).get_check_constraints("scoring_runs")}
    assert checks == {"ck_scoring_runs_status", "ck_scoring_runs_trigger"}
    with get_engine(url).begin() as conn:
        assert conn.execute(text("SELECT id, trigger FROM scoring_runs")).all() == [(1, "batch")]
        conn.execute(
            text(
                "INSERT INTO scoring_runs (id, model_version_id, threshold_set_id, status, trigger, n_candidates, n_scored, "
                "n_skipped, n_failed, started_at) VALUES (2, 1, 1, 'completed', 'on_demand', 1, 1, 0, 0, CURRENT_TIMESTAMP)"
            )
        )
    with pytest.raises(IntegrityError), get_engine(url).begin() as conn:
        conn.execute(text("UPDATE scoring_runs SET trigger = 'cron' WHERE id = 1"))
    with get_engine(url).connect() as conn:
        assert conn.execute(text("SELECT study_key, probability FROM latest_predictions")).one() == ("in.dcm", 0.9)


def test_downgrade_to_0006_keeps_the_rows(url_at_0006):
    url = url_at_0006
    before = counts(url)
    upgrade_database(url, "0009")
    downgrade_database(url, "0006")
    assert counts(url) == before
    assert "trigger" not in {c["name"] for c in inspect(get_engine(url)).get_columns("scoring_runs")}
    assert set(TABLES) and set(VIEWS)
