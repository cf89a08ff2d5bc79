"""Revision 0008 upgrades a database that holds rows, from 0006, on SQLite and PostgreSQL: every
row is kept (SQLite rebuilds ``studies`` for its new CHECK), the new columns and tables are
there, ``failed`` is a study status from then on, and the downgrade gives the rows back."""

from __future__ import annotations

import pytest
from migration_rows import counts, database_with_rows
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from db.engine import downgrade_database, get_engine, upgrade_database


@pytest.fixture
def url_at_0006(database_url) -> str:
    return database_with_rows(database_url, "0006")


def test_upgrade_from_0006_keeps_every_row_and_adds_the_guards(url_at_0006):
    url = url_at_0006
    before = counts(url)
    upgrade_database(url, "0008")
    assert counts(url) == before
    schema = inspect(get_engine(url))
    assert {"scoring_attempts", "last_error"} <= {c["name"] for c in schema.get_columns("studies")}
    assert {"heartbeat_at", "error", "output_dir", "resumed_from"} <= {c["name"] for c in schema.get_columns("training_runs")}
    assert {"scoring_claims", "superseded_predictions"} <= set(schema.get_table_names())
    with get_engine(url).begin() as conn:
        assert conn.execute(text("SELECT scoring_attempts FROM studies ORDER BY id")).scalars().all() == [0, 0]
        conn.execute(text("UPDATE studies SET status = 'failed' WHERE id = 2"))
    with pytest.raises(IntegrityError), get_engine(url).begin() as conn:
        conn.execute(text("UPDATE studies SET status = 'gone' WHERE id = 1"))


def test_downgrade_to_0006_keeps_the_rows(url_at_0006):
    url = url_at_0006
    before = counts(url)
    upgrade_database(url, "0008")
    with get_engine(url).begin() as conn:
        conn.execute(text("UPDATE studies SET status = 'failed' WHERE id = 2"))
    downgrade_database(url, "0006")
    assert counts(url) == before
    with get_engine(url).connect() as conn:
        assert conn.execute(text("SELECT status FROM studies WHERE id = 2")).scalar_one() == "active"
    assert "scoring_claims" not in inspect(get_engine(url)).get_table_names()
