"""Nightly scoring under faults: a run killed mid-way loses nothing and the next run finishes the
job without scoring anything twice; two overlapping runs leave exactly one prediction per study
and finding; bad files among good ones are recorded as failures and never stop a run.

No training: :func:`prepare_scoring_database` registers a randomly initialised network as the
champion (model input 32 px, so a study costs milliseconds) and a folder of small PNGs as
unlabelled studies. Every test runs on SQLite and PostgreSQL (``database_url``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import func, select

from cxrmodel.data.imaging import MIN_SIDE
from cxrmodel.findings import FINDINGS
from cxrmodel.models.artifacts import save_state_dict
from cxrmodel.models.networks import build_model
from db import registry, studies, thresholds
from db.engine import get_engine, session_scope, upgrade_database
from db.models import Prediction, ScoringFailure, ScoringRun
from tasks.scoring import run_scoring

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

ROOT = Path(__file__).resolve().parents[1]
K = len(FINDINGS)  # predictions per scored study
N = 240  # studies in the kill and overlap tests
BATCH = 8
IMAGE_SIZE = 32
AGE_SCALER = {"min_age": 0, "max_age": 100, "median_age": 50}


# --------------------------------------------------------------------------------------------
# Database preparation (no training)


def write_png(path: Path, side: int = 64, seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(side, side), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
    return path


def study_record(key: str, path: Path, i: int = 0, **overrides) -> dict:
    """An unlabelled incoming study with age, sex and view set (``overrides`` replace any)."""
    record = {
        "study_key": key,
        "patient_id": f"P{i:05d}",
        "follow_up": 0,
        "age": float(20 + i % 60),
        "sex": "F" if i % 2 else "M",
        "view": "AP" if i % 3 else "PA",
        "source": "incoming",
        "split": "incoming",
        "image_path": str(path),
        "labelled": False,
    }
    return {**record, **overrides}


def prepare_scoring_database(url: str, root: Path, n_studies: int = N, extra: Sequence[dict] = ()) -> dict[str, int]:
    """Bring ``url`` to the latest schema and make it ready for ``run_scoring`` without
    training: a randomly initialised ``densenet121_fpn`` saved under ``root`` and promoted to
    champion with a threshold of 0.5 for every finding, and ``n_studies`` 64x64 PNGs in
    ``root/incoming`` registered as unlabelled studies, followed by the ``extra`` study records
    (whose files the caller wrote). Returns ``{study_key: study_id}``."""
    upgrade_database(url)
    torch.manual_seed(0)
    artifact = root / "models" / "random-fpn.safetensors"
    sha256 = save_state_dict(build_model("densenet121_fpn").state_dict(), artifact)
    with session_scope(url) as session:
        version = registry.register_model_version(
            session,
            name="random-fpn",
            kind="densenet121_fpn",
            config={"image_size": IMAGE_SIZE, "age_scaler": AGE_SCALER, "architecture": "densenet121_fpn"},
            artifact_path=str(artifact),
            sha256=sha256,
        )
        thresholds.save_threshold_set(session, version.id, "fixed", {"value": 0.5}, {f: 0.5 for f in FINDINGS}, {})
        registry.promote(session, version.id, "fault-injection test champion (random weights)")
    incoming = root / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    records = [study_record(f"in{i:05d}.png", write_png(incoming / f"in{i:05d}.png", seed=i), i) for i in range(n_studies)]
    with session_scope(url) as session:
        counts = studies.sync_studies(session, [*records, *extra])
        assert counts.added == n_studies + len(extra)
        return studies.study_ids(session)


# --------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture
def url(database_url) -> Iterator[str]:
    yield database_url
    get_engine(database_url).dispose()  # let the PostgreSQL fixture drop its database


def champion_id(url: str) -> int:
    with session_scope(url) as session:
        return registry.champion(session).id


def predictions_per_study(url: str) -> dict[int, int]:
    with session_scope(url) as session:
        rows = session.execute(select(Prediction.study_id, func.count()).group_by(Prediction.study_id)).all()
    return dict(rows)


def n_predictions(url: str) -> int:
    with session_scope(url) as session:
        return session.scalar(select(func.count()).select_from(Prediction))


def duplicates(url: str) -> list[tuple]:
    with session_scope(url) as session:
        return session.execute(
            select(Prediction.study_id, Prediction.model_version_id, Prediction.finding, func.count())
            .group_by(Prediction.study_id, Prediction.model_version_id, Prediction.finding)
            .having(func.count() > 1)
        ).all()


def scoring_run(url: str, run_id: int) -> ScoringRun:
    with session_scope(url) as session:
        return session.get(ScoringRun, run_id)


def assert_every_study_scored_once(url: str, study_ids: Sequence[int]) -> None:
    """Exactly one prediction per finding from the champion for every study in ``study_ids``."""
    champ = champion_id(url)
    with session_scope(url) as session:
        rows = session.execute(select(Prediction.study_id, Prediction.model_version_id, Prediction.finding)).all()
    assert duplicates(url) == []
    assert {mv for _, mv, _ in rows} == {champ}
    by_study: dict[int, list[str]] = {}
    for sid, _, finding in rows:
        by_study.setdefault(sid, []).append(finding)
    assert set(by_study) == set(study_ids)
    assert all(sorted(f) == sorted(FINDINGS) for f in by_study.values())


# The scoring subprocess. argv: database URL, batch size, seconds to sleep inside each batch's
# transaction (after the predictions are written, before the commit: a kill then lands on an
# open transaction and slows the run enough to be killed mid-way), and an optional "go" file
# to wait for after the imports (so that two runs start scoring at the same moment).
SCORER = """
import os, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from db import scoring
from tasks.scoring import run_scoring

url, batch_size, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
if delay:
    write = scoring.write_predictions
    def slow_write(session, rows, **options):
        n = write(session, rows, **options)
        time.sleep(delay)
        return n
    scoring.write_predictions = slow_write
if len(sys.argv) > 4:
    go = Path(sys.argv[4])
    Path(f"{go}.{os.getpid()}").touch()  # ready
    while not go.exists():
        time.sleep(0.01)
print("scoring run", run_scoring(url, batch_size=batch_size), flush=True)
"""


def start_scorer(url: str, log: Path, delay: float = 0.0, go: Path | None = None) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    args = [sys.executable, "-c", SCORER, url, str(BATCH), str(delay), *([str(go)] if go else [])]
    with log.open("w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait(proc: subprocess.Popen, log: Path, timeout: float = 120) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"scoring subprocess hung; log:\n{log.read_text()[-3000:]}")


# --------------------------------------------------------------------------------------------
# Tests


def test_killed_run_loses_nothing_and_next_run_scores_only_the_rest(url, tmp_path):
    study_ids = list(prepare_scoring_database(url, tmp_path, N).values())
    log = tmp_path / "killed.log"
    proc = start_scorer(url, log, delay=0.05)
    deadline = time.monotonic() + 120
    killed = False
    try:
        # kill -9 once a few batches are committed, well before the last one
        while time.monotonic() < deadline and proc.poll() is None:
            if 3 * BATCH * K <= n_predictions(url) < N * K // 2:
                proc.kill()
                killed = True
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and not killed:
            proc.kill()
    returncode = proc.wait()
    assert killed and returncode == -signal.SIGKILL, (
        f"scoring was not killed mid-run (exit {returncode}):\n{log.read_text()[-3000:]}"
    )

    # what the killed run committed is whole studies, nothing of its open batch
    before = predictions_per_study(url)
    assert 0 < len(before) < N
    assert set(before.values()) == {K}
    assert n_predictions(url) % K == 0
    with session_scope(url) as session:
        (killed,) = session.scalars(select(ScoringRun)).all()
    assert killed.status == "running" and killed.finished_at is None  # it never got to say so
    assert killed.n_scored == len(before) and killed.n_candidates == N

    # the next run finds its heartbeat stale (any age counts here) and says what happened
    run_id = run_scoring(url, batch_size=BATCH, stale_after_minutes=0)
    assert scoring_run(url, killed.id).status == "abandoned"
    run = scoring_run(url, run_id)
    assert run.status == "completed"
    assert run.n_candidates == N - len(before)
    assert (run.n_scored, run.n_failed) == (N - len(before), 0)
    assert_every_study_scored_once(url, study_ids)
    with session_scope(url) as session:
        by_run = dict(session.execute(select(Prediction.scoring_run_id, func.count()).group_by(Prediction.scoring_run_id)).all())
    # the second run wrote only the studies the killed one had not committed
    assert by_run == {killed.id: len(before) * K, run_id: (N - len(before)) * K}

    # and a third run finds nothing left to do
    again = scoring_run(url, run_scoring(url, batch_size=BATCH))
    assert (again.n_candidates, again.n_scored, again.n_failed) == (0, 0, 0)
    assert n_predictions(url) == N * K


def test_two_overlapping_runs_score_every_study_exactly_once(url, tmp_path):
    study_ids = list(prepare_scoring_database(url, tmp_path, N).values())
    go = tmp_path / "go"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start_scorer(url, log, delay=0.01, go=go) for log in logs]
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("go.*"))) < 2 and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), [log.read_text()[-3000:] for log in logs]
            time.sleep(0.05)
        go.touch()  # both are imported and loaded: start scoring together
        codes = [wait(p, log) for p, log in zip(procs, logs, strict=True)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert codes == [0, 0], "\n\n".join(log.read_text()[-3000:] for log in logs)

    with session_scope(url) as session:
        runs = session.scalars(select(ScoringRun).order_by(ScoringRun.id)).all()
    assert len(runs) == 2
    for run in runs:
        assert run.status == "completed"
        assert run.n_scored + run.n_failed + run.n_skipped == run.n_candidates and run.n_failed == 0
    first, second = runs
    assert first.started_at <= second.finished_at and second.started_at <= first.finished_at  # they did overlap
    assert sum(r.n_candidates for r in runs) >= N
    # the database guards the overlap: a study that one run committed first is skipped by the
    # other, never rescored over it, so between them the runs scored every study exactly once
    assert sum(r.n_scored for r in runs) == N
    with session_scope(url) as session:
        by_run = dict(session.execute(select(Prediction.scoring_run_id, func.count()).group_by(Prediction.scoring_run_id)).all())
    assert by_run == {r.id: r.n_scored * K for r in runs if r.n_scored}
    assert_every_study_scored_once(url, study_ids)
    assert n_predictions(url) == N * K


def test_bad_files_are_recorded_failures_and_the_rest_is_scored(url, tmp_path):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    truncated = bad_dir / "truncated.png"
    truncated.write_bytes(write_png(bad_dir / "whole.png", seed=99).read_bytes()[:600])
    empty = bad_dir / "empty.png"
    empty.write_bytes(b"")
    small = write_png(bad_dir / "small.png", side=MIN_SIDE // 2, seed=98)
    bad = {
        "truncated": (study_record("bad-truncated", truncated, 1), "corrupt or truncated image"),
        "empty": (study_record("bad-empty", empty, 2), "empty file"),
        "small": (study_record("bad-small", small, 3), "image too small: 16x16"),
        "missing": (study_record("bad-missing", bad_dir / "gone.png", 4), "missing file"),
        "no-metadata": (
            study_record("bad-no-metadata", write_png(bad_dir / "fine.png", seed=97), 5, age=None, sex=None, view=None),
            "missing metadata",
        ),
    }
    # partial metadata is not a failure: the median age (and M/PA) stands in
    partial = study_record("partial-metadata", write_png(bad_dir / "partial.png", seed=96), 6, age=None, view=None)
    ids = prepare_scoring_database(url, tmp_path, 30, extra=[*(r for r, _ in bad.values()), partial])
    bad_ids = {ids[record["study_key"]]: reason for record, reason in bad.values()}

    run_id = run_scoring(url, batch_size=BATCH)
    run = scoring_run(url, run_id)
    assert run.status == "completed"
    assert run.n_candidates == len(ids) == 30 + len(bad) + 1
    assert (run.n_scored, run.n_failed) == (len(ids) - len(bad), len(bad))
    assert run.n_scored + run.n_failed == run.n_candidates
    with session_scope(url) as session:
        failures = dict(
            session.execute(
                select(ScoringFailure.study_id, ScoringFailure.reason).where(ScoringFailure.scoring_run_id == run_id)
            ).all()
        )
    assert set(failures) == set(bad_ids)
    for sid, expected in bad_ids.items():
        assert expected in failures[sid], (expected, failures[sid])
    assert_every_study_scored_once(url, [sid for sid in ids.values() if sid not in bad_ids])

    # nothing is lost: the failed studies stay pending and are retried (and fail again) next night
    retry = scoring_run(url, run_scoring(url, batch_size=BATCH))
    assert (retry.n_candidates, retry.n_scored, retry.n_failed) == (len(bad), 0, len(bad))
    assert n_predictions(url) == (len(ids) - len(bad)) * K
