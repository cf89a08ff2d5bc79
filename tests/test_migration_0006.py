"""Revision 0006 upgrades a database that already holds a night's worth of rows, in place, on
SQLite and PostgreSQL: every row is kept (SQLite rebuilds the tables, which must neither
cascade-delete the rows that reference them nor break the views of 0002), the new columns are
there, and from then on a value outside its vocabulary is refused by the database."""

from __future__ import annotations

import pytest
from migration_rows import counts, database_with_rows
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from db.engine import downgrade_database, get_engine, upgrade_database


@pytest.fixture
def url_at_0005(database_url) -> str:
    return database_with_rows(database_url, "0005")


def test_upgrade_keeps_every_row_then_refuses_bad_values(url_at_0005):
    url = url_at_0005
    before = counts(url)
    assert before["latest_predictions"] == before["flagged_studies"] == 1
    upgrade_database(url)
    assert counts(url) == before
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
    assert counts(url) == before


def test_downgrade_to_0005_keeps_the_rows_and_drops_the_checks(url_at_0005):
    url = url_at_0005
    before = counts(url)
    upgrade_database(url)
    downgrade_database(url, "0005")
    assert counts(url) == before
    assert inspect(get_engine(url)).get_check_constraints("studies") == []
    with get_engine(url).begin() as conn:
        conn.execute(text("UPDATE studies SET status = 'anything' WHERE id = 1"))  # free text again, as before 0006


def test_upgrade_stops_with_the_values_it_cannot_keep(url_at_0005):
    with get_engine(url_at_0005).begin() as conn:
        conn.execute(text("UPDATE model_versions SET kind = 'k' WHERE id = 2"))
    with pytest.raises(RuntimeError, match=r"model_versions\.kind holds \['k'\]"):
        upgrade_database(url_at_0005)
    assert counts(url_at_0005)["model_versions"] == 2
