"""Shared fixtures: database URLs (SQLite always, PostgreSQL when CXR_TEST_POSTGRES_URL is set)
and one session-scoped Prefect test server."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Prefect reads its settings from the environment: keep every test run away from ~/.prefect.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="cxr-test-prefect-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"

FIXTURES = Path(__file__).parent / "fixtures"
POSTGRES_URL = os.environ.get("CXR_TEST_POSTGRES_URL")


def pytest_report_header(config):
    if POSTGRES_URL:
        return f"PostgreSQL tests: on ({POSTGRES_URL})"
    return "PostgreSQL tests: SKIPPED (set CXR_TEST_POSTGRES_URL to run them)"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


def _fresh_postgres_database(base_url: str) -> Iterator[str]:
    """Create an empty database on the server behind ``base_url``; drop it afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(base_url)
    name = f"cxr_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name}
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> Iterator[str]:
    """An empty database, once on SQLite and once on PostgreSQL (skipped without a server)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cxr.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL case: CXR_TEST_POSTGRES_URL is not set")
    yield from _fresh_postgres_database(POSTGRES_URL)


@pytest.fixture
def migrated_url(database_url) -> str:
    """``database_url`` upgraded to the latest Alembic revision."""
    from db.engine import upgrade_database

    upgrade_database(database_url)
    return database_url


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One ephemeral Prefect API for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """The test machine's cores are shared; OpenMP spin-waiting makes 2 threads far slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
