"""Attacks on study identity, scoring and run bookkeeping (issue 16), on SQLite and PostgreSQL:
a re-sent image with new pixels, a name reused by a later night, a corrupt file retried every
night, two overlapping scoring runs, runs killed without closing their row, a resumed training
run, a wrong header through the real Prefect flow, and HTML in a model name."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import torch
from adversarial_helpers import labelled_folder, nih_row, open_refresh, studies_and_reasons
from sqlalchemy import func, select, update
from test_scoring_faults import K, assert_every_study_scored_once, prepare_scoring_database, write_png

from cxrmodel.config import TrainConfig
from db import claims, scoring, studies
from db.engine import get_engine, session_scope
from db.models import Prediction, RefreshRun, ScoringRun, Study, SupersededPrediction, TrainingRun, utcnow
from db.statuses import StudyStatus
from tasks.data import register_incoming
from tasks.scoring import run_scoring

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def url(database_url) -> Iterator[str]:
    yield database_url
    get_engine(database_url).dispose()


def _predictions(url: str, key: str) -> list[tuple[int, float]]:
    with session_scope(url) as session:
        return session.execute(
            select(Prediction.scoring_run_id, Prediction.probability).join(Study).where(Study.study_key == key)
        ).all()


# --- 3. identity by content ------------------------------------------------------------------


def test_a_changed_file_is_scored_again_and_both_predictions_are_kept(url, tmp_path):
    ids = prepare_scoring_database(url, tmp_path, 4)
    first = run_scoring(url, batch_size=8)
    path = tmp_path / "incoming" / "in00001.png"
    write_png(path, seed=1234)  # same name, new pixels
    with session_scope(url) as session:
        row = session.get(Study, ids["in00001.png"])
        record = {c: getattr(row, c) for c in ("study_key", "source", "split", "labelled")}
        counts = studies.sync_studies(session, [{**record, "image_path": str(path), "content_hash": "new-hash"}])
    assert (counts.updated, counts.rescored) == (1, 1)
    second = run_scoring(url, batch_size=8)
    with session_scope(url) as session:
        run = session.get(ScoringRun, second)
        old = session.scalars(select(SupersededPrediction).where(SupersededPrediction.study_id == ids["in00001.png"])).all()
    assert run.n_candidates == run.n_scored == 1
    assert {r for r, _ in _predictions(url, "in00001.png")} == {second}
    assert len(old) == K and {p.scoring_run_id for p in old} == {first}


def test_a_later_night_reusing_a_name_never_overwrites_the_earlier_study(url, tmp_path):
    from db.engine import upgrade_database

    upgrade_database(url)
    folder, store = tmp_path / "incoming", tmp_path / "store"
    folder.mkdir()
    for i in range(3):
        write_png(folder / f"img{i}.png", seed=i)
    register_incoming.fn(url, folder, open_refresh(url, "incoming"), store)
    night1, _ = studies_and_reasons(url, 0)
    for i in range(3):  # the next night: the same names, other images
        write_png(folder / f"img{i}.png", seed=100 + i)
    totals = register_incoming.fn(url, folder, open_refresh(url, "incoming"), store)
    night2, _ = studies_and_reasons(url, 0)
    assert (totals.added, totals.updated) == (3, 0)
    assert len(night2) == 6
    for key, study in night1.items():  # the earlier studies keep their own image, by content
        assert night2[key].image_path == study.image_path and night2[key].content_hash == study.content_hash
        assert study.image_path.startswith(str(store)) and study.image_path.endswith(f"{study.content_hash}.png")
    again = register_incoming.fn(url, folder, open_refresh(url, "incoming"), store)  # a third run: nothing new
    assert (again.added, again.updated, again.unchanged) == (0, 0, 3)


# --- 8. bounded retries ----------------------------------------------------------------------


def test_a_corrupt_file_is_tried_a_bounded_number_of_times(url, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    from test_scoring_faults import study_record

    ids = prepare_scoring_database(url, tmp_path, 2, extra=[study_record("bad.png", bad, 9)])
    runs = [run_scoring(url, batch_size=8, max_attempts=2) for _ in range(3)]
    with session_scope(url) as session:
        failed = [session.get(ScoringRun, r).n_failed for r in runs]
        study = session.get(Study, ids["bad.png"])
    assert failed == [1, 1, 0]  # the third night does not decode it again
    assert study.status == StudyStatus.FAILED and study.scoring_attempts == 2
    assert "corrupt or truncated image" in study.last_error
    with session_scope(url) as session:
        from db.report_queries import scoring_failures

        assert "skipped until its file changes" in scoring_failures(session, runs[1])[0][1]
    with session_scope(url) as session:  # a new file (new content hash) is tried again
        record = {"study_key": "bad.png", "source": "incoming", "image_path": str(bad), "labelled": False}
        studies.sync_studies(session, [{**record, "content_hash": "fixed"}])
        assert session.get(Study, ids["bad.png"]).status == StudyStatus.ACTIVE


# --- 9. overlapping runs split the work ------------------------------------------------------


def test_an_overlapping_run_leaves_the_studies_another_run_claimed(url, tmp_path):
    ids = sorted(prepare_scoring_database(url, tmp_path, 40).values())
    with session_scope(url) as session:  # run A has planned and claimed its first chunk
        plan_a, _ = scoring.plan_scoring_run(session, chunk_size=20)
    with session_scope(url) as session:
        held = claims.claim(session, plan_a.scoring_run_id, plan_a.chunks[0], timedelta(hours=1))
    assert held == set(plan_a.chunks[0])
    run_b = run_scoring(url, batch_size=8)  # B starts while A works
    with session_scope(url) as session:
        b = session.get(ScoringRun, run_b)
    assert (b.n_candidates, b.n_scored) == (20, 20)  # only what A had not claimed
    from tasks.scoring import finish_scoring, score_chunk

    counts = [score_chunk.fn(url, plan_a, chunk, batch_size=8) for chunk in plan_a.chunks]
    finish_scoring.fn(url, plan_a, counts)
    assert [(c.scored, c.skipped) for c in counts] == [(20, 0), (0, 20)]
    assert_every_study_scored_once(url, ids)
    with session_scope(url) as session:
        assert session.scalar(select(func.count()).select_from(claims.ScoringClaim)) == 0  # released at the end


def test_a_dead_runs_claims_expire(url, tmp_path):
    ids = sorted(prepare_scoring_database(url, tmp_path, 6).values())
    with session_scope(url) as session:
        plan, _ = scoring.plan_scoring_run(session, chunk_size=6)
        claims.claim(session, plan.scoring_run_id, ids, timedelta(seconds=-1))  # already expired: its process died
    run = run_scoring(url, batch_size=8)
    with session_scope(url) as session:
        assert session.get(ScoringRun, run).n_scored == 6


# --- 7. one stale-run rule -------------------------------------------------------------------


def test_a_killed_refresh_is_marked_failed_by_the_next_start(url, prefect_server):
    from db.engine import upgrade_database
    from tasks.data import start_refresh

    upgrade_database(url)
    killed = open_refresh(url)
    with session_scope(url) as session:
        session.execute(update(RefreshRun).values(heartbeat_at=utcnow() - timedelta(hours=7)))
    start_refresh.fn(url, "synthetic", "x", None)
    with session_scope(url) as session:
        run = session.get(RefreshRun, killed)
    assert run.status == "failed" and "no heartbeat for 360 minutes" in run.error and run.finished_at


def test_a_killed_training_run_is_failed_with_its_folder_and_a_resume_records_every_epoch(url, tmp_path):
    from db.engine import upgrade_database
    from tasks import training as training_tasks

    upgrade_database(url)
    prepared = type("Prepared", (), {"train_rows": [1, 2], "val_rows": [3]})()
    killed = training_tasks.open_training_run(url, TrainConfig(), "cpu", prepared, None, tmp_path / "killed")
    with session_scope(url) as session:
        session.execute(update(TrainingRun).values(heartbeat_at=utcnow() - timedelta(days=1)))
    epochs = [
        {"epoch": e, "train_loss": 0.5, "val_loss": 0.4, "mean_precision": 0.1, "mean_recall": 0.2, "macro_f1": 0.3,
         "mean_auroc": 0.6, "learning_rate": 1e-3, "seconds": 1.0, "images_per_second": 9.0}
        for e in (1, 2)
    ]  # fmt: skip
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    checkpoint.parent.mkdir()
    torch.save({"epoch": 2, "history": epochs}, checkpoint)
    rows: list[dict] = []
    resumed = training_tasks.open_training_run(
        url, TrainConfig(resume_checkpoint=str(checkpoint)), "cpu", prepared, None, tmp_path / "new", rows
    )
    with session_scope(url) as session:
        old, new = session.get(TrainingRun, killed), session.get(TrainingRun, resumed)
        assert old.status == "failed" and f"{tmp_path / 'killed'} is kept" in old.error
        assert new.resumed_from == f"{checkpoint} (epoch 2)"
        assert [e.epoch for e in new.epochs] == [1, 2] and [r["epoch"] for r in rows] == [1, 2]


# --- 10. user errors through the real flow, HTML in a model name -----------------------------


def test_a_wrong_header_fails_once_and_leaves_no_run_running(prefect_server, database_url, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.stages import refresh_flow

    folder = labelled_folder(tmp_path, [nih_row(1)])
    (folder / "Data_Entry_2017_v2020.csv").write_text("Image Index,Wrong\nx.png,1\n")
    state = refresh_flow(str(folder), "nih-local", home=str(tmp_path / "home"), database_url=database_url, return_state=True)
    assert state.is_failed() and "missing required column(s): Finding Labels" in state.message
    with session_scope(database_url) as session:
        runs = session.scalars(select(RefreshRun)).all()
    assert [(r.status, r.error.split(":")[0]) for r in runs] == [("failed", "MetadataFileError")]

    async def task_runs():
        async with get_client() as client:
            return await client.read_task_runs()

    import asyncio

    ingest = [
        t for t in asyncio.run(task_runs()) if t.flow_run_id == state.state_details.flow_run_id and t.name.startswith("ingest")
    ]
    assert [t.run_count for t in ingest] == [1]  # not retried


def test_html_in_a_model_name_is_escaped_in_the_scoring_artifact(prefect_server, url, tmp_path):
    from prefect import flow
    from prefect.client.orchestration import get_client

    prepare_scoring_database(url, tmp_path, 2)
    with session_scope(url) as session:
        session.execute(update(scoring.ModelVersion).values(name="<img src=x onerror=alert(1)>"))

    @flow
    def night():
        return run_scoring(url, batch_size=8)

    night()

    async def artifact():
        async with get_client() as client:
            return await client.read_latest_artifacts()

    import asyncio

    (scoring_md,) = [a for a in asyncio.run(artifact()) if a.key == "cxr-nightly-scoring"]
    assert "<img" not in scoring_md.data and "&lt;img src=x onerror=alert(1)&gt;" in scoring_md.data
