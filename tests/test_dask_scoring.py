"""Scoring as batch tasks: the chunks of a run on a local Dask cluster give the same
predictions, decisions, failures and run counts as the default runner; transient database
errors are retried by Prefect without counting anything twice; other errors are not retried.

No training: the champion is the randomly initialised 32 px network of
:func:`test_scoring_faults.prepare_scoring_database`. Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from test_scoring_faults import K, assert_every_study_scored_once, prepare_scoring_database, study_record, write_png

from db import scoring
from db.engine import get_engine, session_scope
from db.models import Prediction, ScoringFailure, ScoringRun
from tasks.common import transient_db_error

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

N = 60
CHUNK = 16  # 60 good + 2 bad studies: 4 chunks
BATCH = 8


@pytest.fixture
def url(database_url) -> Iterator[str]:
    yield database_url
    get_engine(database_url).dispose()  # let the PostgreSQL fixture drop its database


def _prepare(url: str, root) -> dict[str, int]:
    bad = root / "bad"
    bad.mkdir()
    truncated = bad / "truncated.png"
    truncated.write_bytes(write_png(bad / "whole.png", seed=99).read_bytes()[:600])
    extra = [
        study_record("bad-truncated", truncated, 1),
        study_record("no-metadata", write_png(bad / "fine.png", seed=97), 2, age=None, sex=None, view=None),
    ]
    return prepare_scoring_database(url, root, N, extra=extra)


def _results(url: str, run_id: int) -> tuple[dict, dict, tuple]:
    """(predictions {(study, finding): (probability, decision)}, failures {study: reason}, run counts)."""
    with session_scope(url) as session:
        predictions = {
            (sid, f): (p, d)
            for sid, f, p, d in session.execute(
                select(Prediction.study_id, Prediction.finding, Prediction.probability, Prediction.decision).where(
                    Prediction.scoring_run_id == run_id
                )
            )
        }
        failures = dict(
            session.execute(
                select(ScoringFailure.study_id, ScoringFailure.reason).where(ScoringFailure.scoring_run_id == run_id)
            ).all()
        )
        run = session.get(ScoringRun, run_id)
        counts = (run.status, run.n_candidates, run.n_scored, run.n_failed)
    return predictions, failures, counts


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[str]:
    """An existing Dask cluster of two worker processes (what ``dask scheduler`` + ``dask worker``
    start on real hosts): its scheduler address."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


def test_dask_runner_scores_like_the_default_runner(prefect_server, dask_cluster, url, tmp_path):
    from flows.stages import score_flow

    ids = _prepare(url, tmp_path)
    options = dict(batch_size=BATCH, chunk_size=CHUNK, render_report=False, home=str(tmp_path / "home"), database_url=url)

    default = score_flow(**options).scoring_run_id
    expected, expected_failures, expected_counts = _results(url, default)
    assert expected_counts == ("completed", N + 2, N, 2)
    assert len(expected) == N * K and len(expected_failures) == 2

    # The same studies again on a temporary local cluster, then on the existing one.
    for dask in (dict(dask_workers=2), dict(dask_address=dask_cluster)):
        with session_scope(url) as session:
            session.execute(delete(Prediction))
        on_dask = score_flow(task_runner="dask", **dask, **options).scoring_run_id
        got, failures, counts = _results(url, on_dask)
        assert counts == expected_counts, dask
        assert failures == expected_failures, dask
        assert got.keys() == expected.keys(), dask
        for key, (probability, decision) in expected.items():
            assert got[key][0] == pytest.approx(probability, abs=1e-6), (dask, key)
            assert got[key][1] == decision, (dask, key)
        assert_every_study_scored_once(url, [sid for key, sid in ids.items() if not key.startswith(("bad-", "no-"))])


def test_dask_address_needs_the_dask_runner(prefect_server, url, tmp_path):
    from flows.stages import score_flow

    with pytest.raises(ValueError, match="dask_address"):
        score_flow(dask_address="tcp://127.0.0.1:8786", home=str(tmp_path), database_url=url)


def _failing_writes(monkeypatch, error: Exception, on_call: int) -> list[int]:
    """``db.scoring.write_predictions`` raises ``error`` once, on its ``on_call``-th call (inside the
    batch's transaction, so that batch is rolled back)."""
    calls = [0]
    write = scoring.write_predictions

    def flaky(session, rows, **options):
        calls[0] += 1
        if calls[0] == on_call:
            raise error
        return write(session, rows, **options)

    monkeypatch.setattr(scoring, "write_predictions", flaky)
    return calls


def test_transient_database_error_is_retried_without_double_counting(prefect_server, url, tmp_path, monkeypatch):
    from flows.stages import score_flow

    ids = prepare_scoring_database(url, tmp_path, 40)
    # the third batch of the only chunk fails after two batches were committed
    calls = _failing_writes(monkeypatch, OperationalError("INSERT ...", {}, Exception("server closed the connection")), 3)
    run_id = score_flow(batch_size=BATCH, render_report=False, home=str(tmp_path / "home"), database_url=url).scoring_run_id
    assert calls[0] == 5 + 1  # five batches, one of them twice
    predictions, failures, counts = _results(url, run_id)
    assert counts == ("completed", 40, 40, 0)  # the retry skipped the two committed batches
    assert len(predictions) == 40 * K and failures == {}
    assert_every_study_scored_once(url, list(ids.values()))


def test_other_errors_fail_at_once_and_mark_the_run_failed(prefect_server, url, tmp_path, monkeypatch):
    from flows.stages import score_flow

    prepare_scoring_database(url, tmp_path, 24)
    calls = _failing_writes(monkeypatch, ValueError("a bug"), 2)
    with pytest.raises(ValueError, match="a bug"):
        score_flow(batch_size=BATCH, render_report=False, home=str(tmp_path / "home"), database_url=url)
    assert calls[0] == 2  # no retry
    with session_scope(url) as session:
        run = session.scalars(select(ScoringRun)).one()
        assert (run.status, run.n_candidates, run.n_scored) == ("failed", 24, BATCH)
        assert session.scalar(select(func.count()).select_from(Prediction)) == BATCH * K
        assert run.finished_at is not None


def test_transient_db_error_classification():
    class Disconnect(DBAPIError):
        pass

    assert transient_db_error(OperationalError("SELECT 1", {}, Exception("database is locked")))
    assert transient_db_error(Disconnect("SELECT 1", {}, Exception("gone"), connection_invalidated=True))
    assert not transient_db_error(Disconnect("SELECT 1", {}, Exception("syntax"), connection_invalidated=False))
    assert not transient_db_error(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not transient_db_error(ValueError("bad input"))
    wrapped = RuntimeError("while writing")
    wrapped.__cause__ = OperationalError("INSERT", {}, Exception("connection reset"))
    assert transient_db_error(wrapped)


def test_cli_score_passes_the_runner_options(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import flows.stages
    from db import registry
    from db.engine import upgrade_database
    from flows.cli import app
    from flows.results import ScoreResult

    url = f"sqlite:///{tmp_path.resolve() / 'cxr.db'}"
    upgrade_database(url)
    with session_scope(url) as session:  # the command checks that there is a champion first
        version = registry.register_model_version(
            session, name="m", kind="densenet121_fpn", config={}, artifact_path="/m", sha256="0" * 64
        )
        registry.promote(session, version.id, "first")
    monkeypatch.delenv("CXR_DATABASE_URL", raising=False)
    seen = {}
    monkeypatch.setattr(flows.stages, "score_flow", lambda **kw: seen.update(kw) or ScoreResult(1))
    args = [
        "score",
        "--task-runner",
        "dask",
        "--dask-address",
        "tcp://10.0.0.5:8786",
        "--chunk-size",
        "100",
        "--home",
        str(tmp_path),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert seen == {
        "batch_size": 64,
        "task_runner": "dask",
        "dask_address": "tcp://10.0.0.5:8786",
        "dask_workers": 2,
        "chunk_size": 100,
        "home": str(tmp_path.resolve()),  # the workspace travels as parameters, not through the environment
        "database_url": url,
    }


def test_nightly_deployment_scores_on_dask_when_an_address_is_set():
    from deployments.definitions import NIGHTLY, SCORE, deployment_specs
    from deployments.settings import Settings

    def params(**settings):
        return {d.name: d.parameters for d in deployment_specs(Settings(**settings))}

    assert "task_runner" not in params()[NIGHTLY] and params()[SCORE] == {}
    dask = params(dask_address="tcp://scheduler:8786")
    assert dask[SCORE] == {"task_runner": "dask", "dask_address": "tcp://scheduler:8786"}
    assert dask[NIGHTLY]["task_runner"] == "dask" and dask[NIGHTLY]["dask_address"] == "tcp://scheduler:8786"
