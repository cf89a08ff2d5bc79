"""Revision 0012: after a night and an on-demand request, "the latest night" of the views and of
the example queries is the night, not the request; the request has its own view. On SQLite and
PostgreSQL, with rows written before the upgrade; the downgrade restores 0002's view."""

from __future__ import annotations

import pytest
from migration_rows import counts, database_with_rows
from sqlalchemy import text

from db.engine import downgrade_database, get_engine, upgrade_database
from db.queries import EXAMPLE_QUERIES

# Run 1 (a night, from migration_rows) flagged 'in.dcm' for Mass; run 2 is an on-demand request,
# newer, that flagged study 1 for Effusion.
ON_DEMAND_REQUEST = [
    "INSERT INTO scoring_runs (id, model_version_id, threshold_set_id, status, trigger, n_candidates, n_scored, "
    "n_skipped, n_failed, started_at) VALUES (2, 1, 1, 'completed', 'on_demand', 1, 1, 0, 0, CURRENT_TIMESTAMP)",
    "INSERT INTO predictions (study_id, model_version_id, finding, probability, decision, threshold_set_id, scoring_run_id, created_at) "
    "VALUES (1, 1, 'Effusion', 0.8, true, 1, 2, CURRENT_TIMESTAMP)",
]


@pytest.fixture
def url_with_request(database_url) -> str:
    url = database_with_rows(database_url, "0009")
    with get_engine(url).begin() as conn:
        for sql in ON_DEMAND_REQUEST:
            conn.execute(text(sql))
    return url


def _query(url: str, title: str) -> list[tuple]:
    sql, params = EXAMPLE_QUERIES[title]
    with get_engine(url).connect() as conn:
        return [tuple(row) for row in conn.execute(text(sql), params).all()]


def test_the_latest_night_is_the_batch_run_and_requests_have_their_own_view(url_with_request):
    url = url_with_request
    with get_engine(url).connect() as conn:  # before: the request counts as a night
        assert conn.execute(text("SELECT COUNT(*) FROM flagged_studies")).scalar_one() == 2
    before = counts(url)
    upgrade_database(url, "0012")
    assert counts(url) == {**before, "flagged_studies": 1}
    with get_engine(url).connect() as conn:
        assert conn.execute(text("SELECT scoring_run_id, study_key, finding FROM flagged_studies")).all() == [
            (1, "in.dcm", "Mass")
        ]
        assert conn.execute(text("SELECT id, status, n_scored, model_version FROM batch_runs")).all() == [
            (1, "completed", 1, "net")
        ]
        assert conn.execute(
            text("SELECT scoring_run_id, study_key, finding, probability, decision, model_version FROM on_demand_predictions")
        ).all() == [(2, "00000001_000.png", "Effusion", 0.8, True, "net")]
    latest_night = _query(url, "Studies scored in the latest night, with their flagged findings")
    assert [(key, finding) for key, finding, *_ in latest_night] == [("in.dcm", "Mass")]
    failures = _query(url, "Failures of the latest night and their reasons")
    assert failures == [("00000001_000.png", "empty file")]
    nights = _query(url, "Flag rate per finding per night")
    assert {(run, finding) for run, finding, *_ in nights} == {(1, "Mass")}
    requests = _query(url, "On-demand requests (cxr api), newest first, with their flagged findings")
    assert [(run, key, finding) for run, _, key, finding, *_ in requests] == [(2, "00000001_000.png", "Effusion")]


def test_downgrade_restores_the_view_of_0002(url_with_request):
    url = url_with_request
    upgrade_database(url, "0012")
    downgrade_database(url, "0009")
    with get_engine(url).connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM flagged_studies")).scalar_one() == 2
        names = {"batch_runs", "on_demand_predictions"}
        for name in names:
            with pytest.raises(Exception):  # noqa: B017 - the view is gone (each dialect raises its own error)
                conn.execute(text(f"SELECT * FROM {name}")).all()
            conn.rollback()
