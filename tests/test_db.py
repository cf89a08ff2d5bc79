"""Schema, migrations and idempotent writes on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, inspect, select

from cxrmodel.findings import FINDINGS
from db import refresh, registry, scoring, studies, thresholds
from db.engine import downgrade_database, get_engine, session_scope, upgrade_database
from db.models import Base, ModelVersion, Prediction, QuarantinedRow, Study, StudyLabel, utcnow


def _study(key: str, **over) -> dict:
    rec = {
        "study_key": key,
        "patient_id": key[:8],
        "follow_up": 0,
        "age": 50.0,
        "sex": "M",
        "view": "PA",
        "source": "synthetic",
        "split": "train",
        "image_path": f"/data/{key}",
        "content_hash": "1:1",
        "labelled": True,
    }
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
        first = studies.sync_studies(s, records, labels)
    with session_scope(migrated_url) as s:
        second = studies.sync_studies(s, records, labels)
    assert (first.added, first.updated, first.unchanged) == (5, 0, 0)
    assert (second.added, second.updated, second.unchanged) == (0, 0, 5)

    changed = [dict(r) for r in records]
    changed[0]["age"] = 51.0
    labels2 = {k: dict(v) for k, v in labels.items()}
    labels2[records[1]["study_key"]]["Mass"] = 1
    with session_scope(migrated_url) as s:
        third = studies.sync_studies(s, changed + [_study("00000009_000.png")], labels2)
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
        studies.sync_studies(s, [_study("00000001_000.png", labelled=False, split="incoming")])
        version = registry.register_model_version(
            s, name="m1", kind="densenet121_fpn", config={}, artifact_path="/x", sha256="0" * 64
        )
        tset = thresholds.save_threshold_set(s, version.id, "dynamic_f1", {}, {f: 0.5 for f in FINDINGS}, {})
        study_id = s.scalar(select(Study.id))
        ids = (version.id, tset.id)
    rows = lambda p: [  # noqa: E731
        {
            "study_id": study_id,
            "model_version_id": ids[0],
            "finding": f,
            "probability": p,
            "decision": p >= 0.5,
            "threshold_set_id": ids[1],
            "scoring_run_id": None,
        }
        for f in FINDINGS
    ]
    for p in (0.2, 0.7, 0.7):
        with session_scope(migrated_url) as s:
            scoring.write_predictions(s, rows(p))
    with session_scope(migrated_url) as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == 14
        assert set(s.scalars(select(Prediction.probability))) == {0.7}
        assert scoring.studies_to_score(s, ids[0]) == []


def _prediction_fixture(url: str, n_studies: int = 2) -> tuple[list[int], int, int]:
    with session_scope(url) as s:
        studies.sync_studies(s, [_study(f"0000000{i}_000.png", labelled=False, split="incoming") for i in range(n_studies)])
        version = registry.register_model_version(
            s, name="m1", kind="densenet121_fpn", config={}, artifact_path="/x", sha256="0" * 64
        )
        tset = thresholds.save_threshold_set(s, version.id, "dynamic_f1", {}, {f: 0.5 for f in FINDINGS}, {})
        return list(s.scalars(select(Study.id).order_by(Study.id))), version.id, tset.id


def _stored_predictions(url: str) -> list[tuple]:
    with session_scope(url) as s:
        return [
            (p.study_id, p.finding, p.probability, p.decision, p.threshold_set_id, p.created_at)
            for p in s.scalars(select(Prediction).order_by(Prediction.study_id, Prediction.finding))
        ]


def test_driver_upsert_path_matches_sqlalchemy_path(migrated_url):
    """Uniform rows go to the driver's executemany; rows with different key sets take
    SQLAlchemy's path. Both store the same values (booleans, floats, one shared timestamp),
    a key repeated within one call ends with its last row, and a rerun updates in place."""
    from db.upsert import upsert

    study_ids, vid, tid = _prediction_fixture(migrated_url)
    stamp = utcnow()

    def rows(study_id, p):
        return [
            {
                "study_id": study_id,
                "model_version_id": vid,
                "finding": f,
                "probability": p,
                "decision": p >= 0.5,
                "threshold_set_id": tid,
                "scoring_run_id": None,
            }
            for f in FINDINGS
        ]

    update = ["probability", "decision", "threshold_set_id", "scoring_run_id", "created_at"]
    conflict = ["study_id", "model_version_id", "finding"]
    with session_scope(migrated_url) as s:
        # driver path, with a repeated key: the last row wins
        upsert(
            s, Prediction, rows(study_ids[0], 0.1) + rows(study_ids[0], 0.8), conflict, update, constants={"created_at": stamp}
        )
        # SQLAlchemy path: one row lacks scoring_run_id (different key set)
        mixed = [{**r, "created_at": stamp} for r in rows(study_ids[1], 0.8)]
        del mixed[0]["scoring_run_id"]
        upsert(s, Prediction, mixed, conflict, update)
    stored = _stored_predictions(migrated_url)
    assert len(stored) == 28
    by_study = {sid: [r[1:] for r in stored if r[0] == sid] for sid in study_ids}
    assert by_study[study_ids[0]] == by_study[study_ids[1]]
    assert {r[2:4] for r in stored} == {(0.8, True)}
    assert len({r[5] for r in stored}) == 1

    # a rerun updates in place; a row's own created_at wins over the shared one
    later = utcnow()
    with session_scope(migrated_url) as s:
        upsert(
            s,
            Prediction,
            [{**r, "created_at": later} for r in rows(study_ids[0], 0.3)],
            conflict,
            update,
            constants={"created_at": stamp},
        )
        upsert(s, Prediction, rows(study_ids[1], 0.3), conflict, update, constants={"created_at": later})
    again = _stored_predictions(migrated_url)
    assert len(again) == 28
    assert {r[2:4] for r in again} == {(0.3, False)}
    assert len({r[5] for r in again}) == 1 and again[0][5] != stored[0][5]


def test_driver_upsert_do_nothing_and_strict_booleans(migrated_url):
    from db.upsert import upsert

    study_ids, vid, tid = _prediction_fixture(migrated_url, 1)
    row = {
        "study_id": study_ids[0],
        "model_version_id": vid,
        "finding": FINDINGS[0],
        "probability": 0.9,
        "decision": True,
        "threshold_set_id": tid,
        "scoring_run_id": None,
        "created_at": utcnow(),
    }
    with session_scope(migrated_url) as s:
        assert upsert(s, Prediction, [row], ["study_id", "model_version_id", "finding"]) == 1
        assert upsert(s, Prediction, [{**row, "probability": 0.1}], ["study_id", "model_version_id", "finding"]) == 0  # ignored
    assert [r[2] for r in _stored_predictions(migrated_url)] == [0.9]
    with pytest.raises(ValueError, match="not None, True, or False"):  # SQLAlchemy's bind processors still run
        with session_scope(migrated_url) as s:
            upsert(s, Prediction, [{**row, "decision": 2}], ["study_id", "model_version_id", "finding"], ["decision"])


def _scoring_runs(url: str, version_id: int, threshold_set_id: int, n: int, n_candidates: int = 0) -> list[int]:
    with session_scope(url) as s:
        return [
            scoring.start_scoring_run(
                s, model_version_id=version_id, threshold_set_id=threshold_set_id, n_candidates=n_candidates
            ).id
            for _ in range(n)
        ]


@pytest.mark.parametrize("path", ["driver", "sqlalchemy"])
def test_keep_other_runs_leaves_another_runs_predictions_alone(migrated_url, path):
    """With ``keep_other_runs`` a study's predictions are replaced only by the run that wrote
    them (a retry), never by an overlapping run; on both upsert paths."""
    study_ids, vid, tid = _prediction_fixture(migrated_url, 2)
    run_a, run_b = _scoring_runs(migrated_url, vid, tid, 2)

    def rows(study_id, p, run):
        out = [
            {
                "study_id": study_id,
                "model_version_id": vid,
                "finding": f,
                "probability": p,
                "decision": p >= 0.5,
                "threshold_set_id": tid,
                "scoring_run_id": run,
            }
            for f in FINDINGS
        ]
        if path == "sqlalchemy":  # a row with its own created_at: different key sets take SQLAlchemy's path
            out[0] = {**out[0], "created_at": utcnow()}
        return out

    with session_scope(migrated_url) as s:
        assert scoring.write_predictions(s, rows(study_ids[0], 0.2, run_a), keep_other_runs=True) == 14
    with session_scope(migrated_url) as s:  # run B wins only the study run A has not written
        assert (
            scoring.write_predictions(s, rows(study_ids[0], 0.9, run_b) + rows(study_ids[1], 0.9, run_b), keep_other_runs=True)
            == 14
        )
    with session_scope(migrated_url) as s:
        assert scoring.write_predictions(s, rows(study_ids[0], 0.7, run_a), keep_other_runs=True) == 14  # run A's retry: its own
        assert scoring.studies_scored_by_model(s, vid, study_ids) == set(study_ids)
    stored = {(sid, run, p) for sid, run, p in _prediction_owners(migrated_url)}
    assert stored == {(study_ids[0], run_a, 0.7), (study_ids[1], run_b, 0.9)}
    assert len(_prediction_owners(migrated_url)) == 28

    with session_scope(migrated_url) as s:  # without keep_other_runs the last writer wins
        assert scoring.write_predictions(s, rows(study_ids[0], 0.4, run_b)) == 14
    assert {(sid, run, p) for sid, run, p in _prediction_owners(migrated_url)} == {
        (study_ids[0], run_b, 0.4),
        (study_ids[1], run_b, 0.9),
    }


def _prediction_owners(url: str) -> list[tuple]:
    with session_scope(url) as s:
        return s.execute(select(Prediction.study_id, Prediction.scoring_run_id, Prediction.probability)).all()


def test_stale_running_scoring_runs_are_abandoned(migrated_url):
    from datetime import timedelta

    from db.models import ScoringRun

    _, vid, tid = _prediction_fixture(migrated_url, 1)
    dead, alive, done = _scoring_runs(migrated_url, vid, tid, 3, n_candidates=10)
    with session_scope(migrated_url) as s:
        s.get(ScoringRun, dead).heartbeat_at = utcnow() - timedelta(minutes=90)
        scoring.add_scoring_counts(s, alive, scored=2)  # a batch beats the heart
        scoring.add_scoring_counts(s, done, scored=6, failed=1)
        scoring.finish_scoring_run(s, done)
    with session_scope(migrated_url) as s:
        assert scoring.abandon_stale_scoring_runs(s, timedelta(minutes=60)) == [dead]
    with session_scope(migrated_url) as s:
        assert scoring.abandon_stale_scoring_runs(s, timedelta(minutes=60)) == []
        runs = {r.id: r for r in s.scalars(select(ScoringRun))}
        assert (runs[dead].status, runs[alive].status, runs[done].status) == ("abandoned", "running", "completed")
        assert runs[dead].finished_at is not None and runs[alive].finished_at is None
        assert (runs[alive].n_scored, runs[alive].n_skipped) == (2, 0)
        # a completed run's candidates that it neither scored nor failed were skipped
        assert (runs[done].n_scored, runs[done].n_failed, runs[done].n_skipped) == (6, 1, 3)


def test_quarantine_is_recorded_once_per_row_and_reason(migrated_url):
    with session_scope(migrated_url) as s:
        run1 = refresh.start_refresh(s, "nih-local", "/data", None).id
        refresh.record_quarantine(
            s, run1, "nih-local", [{"row_key": "x.png", "row_number": 3, "reason": "age 150 outside 0-120", "raw": "x"}]
        )
    with session_scope(migrated_url) as s:
        run2 = refresh.start_refresh(s, "nih-local", "/data", None).id
        refresh.record_quarantine(
            s, run2, "nih-local", [{"row_key": "x.png", "row_number": 3, "reason": "age 150 outside 0-120", "raw": "x"}]
        )
    with session_scope(migrated_url) as s:
        rows = s.scalars(select(QuarantinedRow)).all()
        assert len(rows) == 1 and rows[0].refresh_run_id == run2


def test_promotion_retires_previous_champion(migrated_url):
    with session_scope(migrated_url) as s:
        a = registry.register_model_version(
            s, name="a", kind="densenet121_fpn", config={}, artifact_path="/a", sha256="a" * 64
        ).id
        b = registry.register_model_version(
            s, name="b", kind="densenet121_fpn", config={}, artifact_path="/b", sha256="b" * 64
        ).id
        registry.promote(s, a, "first")
        registry.promote(s, b, "better")
    with session_scope(migrated_url) as s:
        assert registry.champion(s).name == "b"
        statuses = dict(s.execute(select(ModelVersion.name, ModelVersion.status)).all())
        assert statuses == {"a": "retired", "b": "champion"}


def test_session_scope_rolls_back_on_error(migrated_url):
    with pytest.raises(RuntimeError):
        with session_scope(migrated_url) as s:
            studies.sync_studies(s, [_study("00000001_000.png")])
            raise RuntimeError("boom")
    with session_scope(migrated_url) as s:
        assert s.scalar(select(func.count()).select_from(Study)) == 0


def test_a_process_that_ends_with_os_exit_leaves_the_whole_database_in_the_file(tmp_path):
    """A ``cxr`` command ends with ``os._exit`` after the atexit handlers, closing no connection:
    the engine's handler checkpoints the write-ahead log, so copying ``cxr.db`` alone (no
    ``-wal``) gives every table and row."""
    import shutil
    import subprocess
    import sys
    import textwrap

    db = tmp_path / "home" / "cxr.db"
    script = textwrap.dedent(
        f"""
        import atexit, os
        from sqlalchemy import text
        from db.engine import get_engine, upgrade_database
        url = "sqlite:///{db}"
        upgrade_database(url)
        with get_engine(url).begin() as c:
            c.execute(text(
                "INSERT INTO refresh_runs (source, location, started_at, n_rows, n_added, n_updated, n_unchanged, "
                "n_quarantined, status) VALUES ('synthetic', '/copied', CURRENT_TIMESTAMP, 2, 2, 0, 0, 0, 'completed')"
            ))
        atexit._run_exitfuncs()
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    wal = db.with_name("cxr.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    alone = tmp_path / "copy" / "cxr.db"
    alone.parent.mkdir()
    shutil.copyfile(db, alone)
    with get_engine(f"sqlite:///{alone}").connect() as conn:
        assert conn.exec_driver_sql("SELECT location FROM refresh_runs").scalars().all() == ["/copied"]
