"""Writing the predictions of 100,000 studies (14 findings each, 1.4 M rows) the way the
scoring task does (one transaction per batch of 64 studies, the task's default batch size):
``scoring.write_predictions(..., keep_other_runs=True)``, whose row count says how many studies
the run won, against a bare driver ``executemany`` of the same
``INSERT ... ON CONFLICT ... DO UPDATE ... WHERE`` over the same rows with the same commits
(``sqlite3`` / ``psycopg``), into fresh databases with the Alembic schema.

The two sides alternate batch by batch (each into its own database) so that other load on the
machine hits both alike. SQLite always; PostgreSQL when ``CXR_BENCH_POSTGRES_URL`` or
``CXR_TEST_POSTGRES_URL`` is set. ``CXR_BENCH_WRITES_STUDIES`` changes the study count.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import emit  # noqa: E402

N_STUDIES = int(os.environ.get("CXR_BENCH_WRITES_STUDIES", "100000"))
BATCH_STUDIES = 64
TARGET = 0.8

COLUMNS = (
    "study_id",
    "model_version_id",
    "finding",
    "probability",
    "decision",
    "threshold_set_id",
    "scoring_run_id",
    "created_at",
)
UPDATED = ("probability", "decision", "threshold_set_id", "scoring_run_id", "created_at")


def bare_sql(placeholder: str) -> str:
    return (
        f"INSERT INTO predictions ({', '.join(COLUMNS)}) VALUES ({', '.join([placeholder] * len(COLUMNS))}) "
        "ON CONFLICT (study_id, model_version_id, finding) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in UPDATED)
        + " WHERE predictions.scoring_run_id = excluded.scoring_run_id"
    )


def prepare(url: str) -> tuple[int, int, int, list[int]]:
    """Alembic schema, N_STUDIES studies, one model version, threshold set and scoring run."""
    from sqlalchemy import insert, select

    from cxrmodel.findings import FINDINGS
    from db import registry, scoring, thresholds
    from db.engine import session_scope, upgrade_database
    from db.models import Study, utcnow

    upgrade_database(url)
    stamp = utcnow()
    with session_scope(url) as s:
        s.execute(
            insert(Study),
            [
                {
                    "study_key": f"{i:08d}_000.png",
                    "source": "bench",
                    "split": "incoming",
                    "image_path": "-",
                    "labelled": False,
                    "status": "active",
                    "created_at": stamp,
                    "updated_at": stamp,
                }
                for i in range(N_STUDIES)
            ],
        )
        version = registry.register_model_version(
            s, name="bench", kind="densenet121_fpn", config={}, artifact_path="-", sha256="0" * 64
        )
        tset = thresholds.save_threshold_set(s, version.id, "fixed", {}, {f: 0.5 for f in FINDINGS}, {})
        run = scoring.start_scoring_run(s, model_version_id=version.id, threshold_set_id=tset.id, n_candidates=N_STUDIES)
        ids = list(s.scalars(select(Study.id).order_by(Study.id)))
        return version.id, tset.id, run.id, ids


def batches(ids: list[int], vid: int, tid: int, rid: int) -> Iterator[list[dict]]:
    """The rows the scoring task builds, one list per batch of BATCH_STUDIES studies."""
    import numpy as np

    from cxrmodel.findings import FINDINGS

    rng = np.random.default_rng(0)
    for start in range(0, len(ids), BATCH_STUDIES):
        chunk = ids[start : start + BATCH_STUDIES]
        probs = rng.random((len(chunk), len(FINDINGS)), dtype=np.float32)
        yield [
            {
                "study_id": sid,
                "model_version_id": vid,
                "finding": f,
                "probability": float(p),
                "decision": bool(p >= 0.5),
                "threshold_set_id": tid,
                "scoring_run_id": rid,
            }
            for sid, row in zip(chunk, probs, strict=True)
            for f, p in zip(FINDINGS, row, strict=True)
        ]


def bare_params(rows: list[dict], created_at) -> list[tuple]:
    return [
        (
            r["study_id"],
            r["model_version_id"],
            r["finding"],
            r["probability"],
            r["decision"],
            r["threshold_set_id"],
            r["scoring_run_id"],
            created_at,
        )
        for r in rows
    ]


def race(ours_url: str, bare_url: str, bare_connect, placeholder: str, created_at) -> tuple[float, float, int]:
    """Alternate batches: the scoring task's write (an upsert that keeps other runs' rows) in
    one session per batch vs bare ``cursor.executemany`` + commit.
    Returns (ours rows/s, bare rows/s, rows)."""
    from sqlalchemy import func, select

    from db import scoring
    from db.engine import session_scope
    from db.models import Prediction

    vid, tid, rid, ids = prepare(ours_url)
    bvid, btid, brid, bids = prepare(bare_url)
    assert (vid, tid, rid, ids) == (bvid, btid, brid, bids)
    sql = bare_sql(placeholder)
    conn = bare_connect()
    ours_s = bare_s = 0.0
    n = 0
    try:
        for rows in batches(ids, vid, tid, rid):
            params = bare_params(rows, created_at)
            t0 = time.perf_counter()
            with session_scope(ours_url) as s:
                written = scoring.write_predictions(s, rows, keep_other_runs=True)
            t1 = time.perf_counter()
            assert written == len(rows)
            cur = conn.cursor()
            cur.executemany(sql, params)
            conn.commit()
            t2 = time.perf_counter()
            ours_s += t1 - t0
            bare_s += t2 - t1
            n += len(rows)
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM predictions")
        assert cur.fetchone()[0] == n
    finally:
        conn.close()
    with session_scope(ours_url) as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == n
    return n / ours_s, n / bare_s, n


def sqlite_case(work: Path) -> None:
    import sqlite3

    ours, bare = work / "ours.db", work / "bare.db"

    def connect():
        conn = sqlite3.connect(bare, timeout=30)
        # the pragmas db.engine sets on every SQLite connection
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    # SQLAlchemy stores SQLite DATETIME as this text; the bare side sends the same text.
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    r_ours, r_bare, n = race(f"sqlite:///{ours}", f"sqlite:///{bare}", connect, "?", stamp)
    report("SQLite", r_ours, r_bare, n)


@contextmanager
def postgres_databases(base: str, count: int) -> Iterator[list[str]]:
    """``count`` fresh, empty databases on the server behind ``base``; dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    from db.engine import get_engine, normalise_url

    url = make_url(normalise_url(base))
    admin_dsn = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    names = [f"cxr_bench_writes_{uuid.uuid4().hex[:8]}" for _ in range(count)]
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield [url.set(database=name).render_as_string(hide_password=False) for name in names]
    finally:
        get_engine.cache_clear()
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            for name in names:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
                admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


def postgres_case(base: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    with postgres_databases(base, 2) as (ours, bare):
        dsn = make_url(bare).set(drivername="postgresql").render_as_string(hide_password=False)
        r_ours, r_bare, n = race(ours, bare, lambda: psycopg.connect(dsn), "%s", datetime.now(UTC))
    report("PostgreSQL", r_ours, r_bare, n)


def report(name: str, ours: float, bare: float, n: int) -> None:
    ratio = ours / bare
    emit(f"predictions: {n:,} rows into {name}, bare driver executemany", round(bare), "rows/s", "reference")
    emit(
        f"predictions: {n:,} rows into {name}, scoring.write_predictions",
        round(ours),
        "rows/s",
        f"ratio {ratio:.2f} of bare (target >= {TARGET})",
        ratio >= TARGET,
    )


def main() -> None:
    print(
        f"{N_STUDIES:,} studies x 14 findings, {BATCH_STUDIES} studies per transaction, cpus {os.cpu_count()}, "
        f"load average {os.getloadavg()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="cxr-bench-writes-") as work:
        sqlite_case(Path(work))
    pg = os.environ.get("CXR_BENCH_POSTGRES_URL") or os.environ.get("CXR_TEST_POSTGRES_URL")
    if pg:
        postgres_case(pg)
    else:
        emit("predictions: PostgreSQL", None, "", "skipped: set CXR_BENCH_POSTGRES_URL")
    print(f"load average after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
