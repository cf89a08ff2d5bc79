"""Shared fixtures: database URLs (SQLite always, PostgreSQL when CXR_TEST_POSTGRES_URL is set)
and one session-scoped Prefect test server.

``make test`` runs the suite on pytest-xdist workers (``-n logical --dist loadfile``): every test
file runs whole on one worker, so module fixtures are built once; session fixtures (the Prefect
servers, the browser) are built once per worker. Whatever a fixture creates outside its
``tmp_path`` must be unique per worker: ports come from :func:`free_port`, PostgreSQL databases
from :func:`_fresh_postgres_database` (a random name), PREFECT_HOME is a fresh folder per
process (below). Each worker gets one torch thread (its processes too): two workers with two
threads each on two cores spin against each other (issue 24).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Prefect reads its settings from the environment: keep every test run away from ~/.prefect.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix=f"cxr-test-prefect-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-")
if "PYTEST_XDIST_WORKER" in os.environ:
    # One intra-op thread per worker, set before torch is imported, inherited by every process
    # a test starts (cxr, prefect workers, DDP ranks, the API).
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CXR_TORCH_THREADS"):
        os.environ[_name] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"

FIXTURES = Path(__file__).parent / "fixtures"
REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
POSTGRES_URL = os.environ.get("CXR_TEST_POSTGRES_URL")


def pytest_report_header(config):
    if POSTGRES_URL:
        return f"PostgreSQL tests: on ({POSTGRES_URL})"
    return "PostgreSQL tests: SKIPPED (set CXR_TEST_POSTGRES_URL to run them)"


def pytest_collection_modifyitems(config, items):
    """Files with ``slow`` tests (end-to-end runs that train) first, each file's order kept:
    with ``--dist loadfile`` the workers take files in this order, so the long files start
    early instead of leaving one worker busy at the end while the other idles."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: order within a file kept


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
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})
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
    """One ephemeral Prefect API for every flow test of the session (of the xdist worker)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):  # two xdist workers start one each on a busy host
        yield


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """The test machine's cores are shared; OpenMP spin-waiting makes 2 threads far slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early if ``process`` exits."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def stop_process(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGINT (what Ctrl-C sends), then SIGKILL, to the process group ``process`` leads."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@dataclass
class BackgroundProcess:
    """A command started in its own process group, its output in ``log``."""

    args: list[str]
    env: dict[str, str]
    log: Path
    cwd: Path = REPO_ROOT
    process: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> BackgroundProcess:
        self._fh = open(self.log, "ab")
        self.process = subprocess.Popen(
            self.args, env=self.env, cwd=self.cwd, stdout=self._fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self._fh.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class RealPrefectServer:
    """A ``prefect server start`` process (API, UI and services, the scheduler included) and the
    environment that points Prefect's CLI, workers and ``cxr serve`` at it."""

    api_url: str
    ui_url: str
    env: dict[str, str]
    log: Path

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 180, cwd: Path = REPO_ROOT):
        """Run Prefect's own CLI (``prefect <args>``) against this server."""
        return subprocess.run(
            [str(VENV_BIN / "prefect"), *args],
            env={**self.env, **(env or {})},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def background(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> BackgroundProcess:
        return BackgroundProcess(args, {**self.env, **(env or {})}, log).start()

    def client(self):
        from prefect.client.orchestration import PrefectClient

        return PrefectClient(api=self.api_url)


@pytest.fixture(scope="session")
def real_prefect_server(tmp_path_factory) -> Iterator[RealPrefectServer]:
    """A real ``prefect server start`` process on a free port, its scheduler looping every
    second, with its own PREFECT_HOME. Unlike the test harness, it runs the server's services
    (the scheduler creates the runs of scheduled deployments) and answers Prefect's CLI."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CXR_"))}
    env.update(
        {
            "PREFECT_HOME": str(home / "client"),
            "PREFECT_API_URL": api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",
            "PREFECT_RUNNER_POLL_FREQUENCY": "2",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PYTHONUNBUFFERED": "1",
        }
    )
    server_env = {**env, "PREFECT_HOME": str(home / "server")}
    server = BackgroundProcess(
        [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        server_env,
        home / "server.log",
    ).start()
    try:
        wait_for_http(f"{api}/health", 120, server.process)
    except Exception:
        server.stop()
        raise RuntimeError(f"prefect server did not start:\n{server.output()[-3000:]}") from None
    try:
        yield RealPrefectServer(api, f"http://127.0.0.1:{port}", env, server.log)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium through Selenium (skipped, with the reason, when it is missing)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (test extra)")
    chromium = _executable(os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium"), "chromium") or _executable(
        "/usr/bin/chromium-browser", "chromium-browser"
    )
    driver_path = _executable(os.environ.get("CXR_CHROMEDRIVER", "/usr/bin/chromedriver"), "chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("headless browser tests need Chromium and chromedriver (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1600",
        "--hide-scrollbars",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _executable(path: str, name: str) -> str | None:
    if Path(path).is_file() and os.access(path, os.X_OK):
        return path
    return shutil.which(name)
