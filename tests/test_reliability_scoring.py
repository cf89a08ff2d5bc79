"""Issue 22 items 5 and 7 on nightly scoring, on SQLite and PostgreSQL: a run that fails (its
champion's weights fail their integrity check, or the database goes away mid-run) is marked
``failed`` with the reason and releases its claims once the database answers, so the next run
picks up every pending study at once; a run whose process was killed is reclaimable at once
(its host and PID are recorded), not after the hour-long stale rule; the retry budget for a
lost connection is a setting with a doubling back-off."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from service_faults import CuttableLink, flip_one_byte
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from test_scoring_faults import (
    BATCH,
    K,
    N,
    assert_every_study_scored_once,
    n_predictions,
    predictions_per_study,
    prepare_scoring_database,
    scoring_run,
    start_scorer,
    url,  # noqa: F401 - the fixture
)

from db.engine import get_engine, session_scope
from db.models import ScoringClaim, ScoringRun
from tasks.common import backoff_delays, db_retry_options
from tasks.scoring import run_scoring

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def _claims(url: str) -> int:
    with session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(ScoringClaim))


def _runs(url: str) -> list[ScoringRun]:
    with session_scope(url) as session:
        return list(session.scalars(select(ScoringRun).order_by(ScoringRun.id)))


def test_the_retry_budget_is_a_doubling_back_off_that_covers_it():
    assert backoff_delays(240) == [2, 4, 8, 16, 32, 60, 60, 60]
    assert sum(backoff_delays(600)) >= 600 and max(backoff_delays(600)) == 60
    assert db_retry_options(240)["retries"] == 8 and db_retry_options(0) == {"retries": 0, "retry_delay_seconds": 0}
    from deployments.settings import Settings

    assert sum(backoff_delays(Settings().scoring_db_retry_s)) >= 180  # a few minutes by default, not 42 s


def test_a_run_failing_its_weights_check_stores_the_reason(url, tmp_path):  # noqa: F811
    from cxrmodel.models.artifacts import ArtifactIntegrityError

    prepare_scoring_database(url, tmp_path, 16)
    flip_one_byte(tmp_path / "models" / "random-fpn.safetensors")
    with pytest.raises(ArtifactIntegrityError):
        run_scoring(url, batch_size=BATCH)
    (run,) = _runs(url)
    assert run.status == "failed" and run.finished_at is not None
    assert run.error.startswith("ArtifactIntegrityError: ") and "sha256" in run.error
    assert _claims(url) == 0


def test_a_killed_run_is_reclaimed_at_once_by_the_next_run(url, tmp_path):  # noqa: F811
    """kill -9 mid-run, then a rerun with the default stale rule (60 minutes): the killed run's
    process is gone, so it is abandoned and its claimed studies are scored now."""
    study_ids = list(prepare_scoring_database(url, tmp_path, N).values())
    log = tmp_path / "killed.log"
    proc = start_scorer(url, log, delay=0.05)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if n_predictions(url) >= 3 * BATCH * K:
            proc.kill()
            break
        time.sleep(0.01)
    assert proc.wait() == -signal.SIGKILL, log.read_text()[-3000:]
    before = predictions_per_study(url)
    assert 0 < len(before) < N and _claims(url) > 0  # the killed run holds claims on the rest of its chunk
    run_id = run_scoring(url, batch_size=BATCH)  # stale_after_minutes: the default hour
    killed, run = scoring_run(url, _runs(url)[0].id), scoring_run(url, run_id)
    assert killed.status == "abandoned" and "process" in killed.error and killed.pid == proc.pid
    assert run.status == "completed" and run.n_candidates == N - len(before) and run.n_scored == N - len(before)
    assert_every_study_scored_once(url, study_ids)
    assert _claims(url) == 0


def test_a_database_outage_mid_run_fails_the_run_with_its_reason_and_frees_every_study(url, tmp_path):  # noqa: F811
    """PostgreSQL reached through a link the test cuts for 3 s mid-run (the shared server is
    never stopped). Outside Prefect the chunk has no task retries, so the run fails at once;
    it closes itself when the database is back, and the next run scores the rest at once."""
    if not url.startswith("postgresql"):
        pytest.skip("an outage of a database server: PostgreSQL only")
    study_ids = list(prepare_scoring_database(url, tmp_path, N).values())
    parsed = make_url(url)
    link = CuttableLink(parsed.host or "127.0.0.1", parsed.port or 5432).start()
    linked = parsed.set(host="127.0.0.1", port=link.port).render_as_string(hide_password=False)
    errors: list[BaseException] = []

    def scorer() -> None:
        try:
            run_scoring(linked, batch_size=BATCH, db_retry_s=60)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    thread = threading.Thread(target=scorer)
    try:
        thread.start()
        deadline = time.monotonic() + 120
        while n_predictions(url) < 2 * BATCH * K and time.monotonic() < deadline:
            time.sleep(0.01)
        link.cut()
        time.sleep(3)
        link.restore()
        thread.join(120)
    finally:
        link.stop()
        get_engine(linked).dispose()
    assert not thread.is_alive() and len(errors) == 1, errors
    (failed,) = _runs(url)
    assert failed.status == "failed" and failed.error.startswith("OperationalError: "), failed.error
    assert _claims(url) == 0
    scored_before = len(predictions_per_study(url))
    assert 0 < scored_before < N
    run = scoring_run(url, run_scoring(url, batch_size=BATCH))
    assert run.n_candidates == N - scored_before and run.status == "completed"
    assert_every_study_scored_once(url, study_ids)
