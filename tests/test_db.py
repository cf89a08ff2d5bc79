"""Schema, migrations and idempotent writes on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, inspect, select

from cxrmodel.findings import FINDINGS
from db import repository as repo
from db.engine import downgrade_database, get_engine, session_scope, upgrade_database
from db.models import Base, Prediction, QuarantinedRow, Study, StudyLabel


def _study(key: str, **over) -> dict:
    rec = {"study_key": key, "patient_id": key[:8], "follow_up": 0, "age": 50.0, "sex": "M", "view": "PA",
           "source": "synthetic", "split": "train", "image_path": f"/data/{key}", "content_hash": "1:1", "labelled": True}
    rec.update(over)
    return rec


def test_migration_creates_every_table_and_downgrades(database_url):
    upgrade_database(database_url)
    upgrade_database(database_url)  # idempotent
    tables = set(inspect(get_engine(database_url)).get_table_names())
    assert set(Base.metadata.tables) <= tables
    downgrade_database(database_url, "base")
    remaining = set(inspect(get_engine(database_url)).get_table_names()) - {"alembic_version"}
    assert remaining == set()


def test_sync_studies_is_idempotent_and_detects_changes(migrated_url):
    records = [_study(f"0000000{i}_000.png") for i in range(5)]
    labels = {r["study_key"]: {f: int(f == "Effusion") for f in FINDINGS} for r in records}
    with session_scope(migrated_url) as s:
        first = repo.sync_studies(s, records, labels)
    with session_scope(migrated_url) as s:
        second = repo.sync_studies(s, records, labels)
    assert (first.added, first.updated, first.unchanged) == (5, 0, 0)
    assert (second.added, second.updated, second.unchanged) == (0, 0, 5)

    changed = [dict(r) for r in records]
    changed[0]["age"] = 51.0
    labels2 = {k: dict(v) for k, v in labels.items()}
    labels2[records[1]["study_key"]]["Mass"] = 1
    with session_scope(migrated_url) as s:
        third = repo.sync_studies(s, changed + [_study("00000009_000.png")], labels2)
    assert (third.added, third.updated, third.unchanged) == (1, 2, 3)
    with session_scope(migrated_url) as s:
        assert s.scalar(select(func.count()).select_from(Study)) == 6
        # only positive findings are stored: 5 Effusion + 1 Mass
        assert s.scalar(select(func.count()).select_from(StudyLabel)) == 6
        mass = s.scalar(
            select(StudyLabel.value).join(Study).where(Study.study_key == records[1]["study_key"], StudyLabel.finding == "Mass")
        )
        assert mass == 1


def test_predictions_upsert_keeps_one_row_per_study_model_finding(migrated_url):
    with session_scope(migrated_url) as s:
        repo.sync_studies(s, [_study("00000001_000.png", labelled=False, split="incoming")])
        version = repo.register_model_version(s, name="m1", kind="densenet121_fpn", config={}, artifact_path="/x", sha256="0" * 64)
        tset = repo.save_threshold_set(s, version.id, "dynamic_f1", {}, {f: 0.5 for f in FINDINGS}, {})
        study_id = s.scalar(select(Study.id))
        ids = (version.id, tset.id)
    rows = lambda p: [  # noqa: E731
        {"study_id": study_id, "model_version_id": ids[0], "finding": f, "probability": p, "decision": p >= 0.5,
         "threshold_set_id": ids[1], "scoring_run_id": None}
        for f in FINDINGS
    ]
    for p in (0.2, 0.7, 0.7):
        with session_scope(migrated_url) as s:
            repo.write_predictions(s, rows(p))
    with session_scope(migrated_url) as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == 14
        assert set(s.scalars(select(Prediction.probability))) == {0.7}
        assert repo.studies_to_score(s, ids[0]) == []


def test_quarantine_is_recorded_once_per_row_and_reason(migrated_url):
    with session_scope(migrated_url) as s:
        run1 = repo.start_refresh(s, "nih-local", "/data", None).id
        repo.record_quarantine(s, run1, "nih-local", [{"row_key": "x.png", "row_number": 3, "reason": "age 150 outside 0-120", "raw": "x"}])
    with session_scope(migrated_url) as s:
        run2 = repo.start_refresh(s, "nih-local", "/data", None).id
        repo.record_quarantine(s, run2, "nih-local", [{"row_key": "x.png", "row_number": 3, "reason": "age 150 outside 0-120", "raw": "x"}])
    with session_scope(migrated_url) as s:
        rows = s.scalars(select(QuarantinedRow)).all()
        assert len(rows) == 1 and rows[0].refresh_run_id == run2


def test_promotion_retires_previous_champion(migrated_url):
    with session_scope(migrated_url) as s:
        a = repo.register_model_version(s, name="a", kind="k", config={}, artifact_path="/a", sha256="a" * 64).id
        b = repo.register_model_version(s, name="b", kind="k", config={}, artifact_path="/b", sha256="b" * 64).id
        repo.promote(s, a, "first")
        repo.promote(s, b, "better")
    with session_scope(migrated_url) as s:
        assert repo.champion(s).name == "b"
        statuses = dict(s.execute(select(repo.ModelVersion.name, repo.ModelVersion.status)).all())
        assert statuses == {"a": "retired", "b": "champion"}


def test_session_scope_rolls_back_on_error(migrated_url):
    with pytest.raises(RuntimeError):
        with session_scope(migrated_url) as s:
            repo.sync_studies(s, [_study("00000001_000.png")])
            raise RuntimeError("boom")
    with session_scope(migrated_url) as s:
        assert s.scalar(select(func.count()).select_from(Study)) == 0
