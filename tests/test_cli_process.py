"""How the ``cxr`` process ends, through the real process: an unexpected error is one line that
names it and the log file holding its traceback (exit status 1), a closed pipe is silent, Ctrl-C
during a flow leaves the run cancelled or crashed (exit status 130), SIGTERM stops ``cxr api``
and ``cxr serve`` cleanly (exit status 0), and the configuration is resolved one way
everywhere (``--config``, else ``CXR_CONFIG``, else the shipped demo)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port, wait_for_http
from test_cli_errors import REPO_ROOT, assert_one_line_error, cxr

UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/test"


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CXR_", "PREFECT_API_URL"))}
    return {**env, "CXR_HOME": str(home), "PYTHONPATH": str(REPO_ROOT), **extra}


def _start(home: Path, *args: str, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=REPO_ROOT,
        env=_env(home, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _logged_traceback(line: str) -> str:
    match = re.search(r"full traceback in (\S+);", line)
    assert match, line
    return Path(match.group(1)).read_text(encoding="utf-8")


def test_an_unreachable_database_is_one_line_naming_the_log(tmp_path):
    result = cxr(tmp_path, "models", "list", extra_env={"CXR_DATABASE_URL": UNREACHABLE})
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: OperationalError: "), result.stderr
    assert "Traceback" not in result.stderr and str(tmp_path / "logs") in lines[0]
    logged = _logged_traceback(lines[0])
    assert logged.startswith("cxr models list") and "Traceback" in logged and "Connection refused" in logged

    debug = cxr(tmp_path, "--debug", "models", "list", extra_env={"CXR_DATABASE_URL": UNREACHABLE})
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "OperationalError" in debug.stderr


def test_a_tampered_database_file_is_one_line_and_status_1(tmp_path):
    (tmp_path / "cxr.db").write_bytes(b"this is not an SQLite file " * 64)
    result = cxr(tmp_path, "runs")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: DatabaseError: ") and "not a database" in lines[0], result.stderr
    assert "DatabaseError" in _logged_traceback(lines[0])


def test_a_closed_pipe_is_silent(tmp_path):
    """The reader is gone before ``cxr`` writes (what ``| head -1`` does to a longer output)."""
    process = _start(tmp_path, "--help")
    process.stdout.close()
    stderr = process.stderr.read()
    process.wait(timeout=120)
    assert stderr == "" and process.returncode in (0, 1)

    piped = subprocess.run(
        f"{sys.executable} -m flows.cli --help | head -1",
        shell=True,
        cwd=REPO_ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert piped.stderr == "" and len(piped.stdout.splitlines()) == 1


@pytest.mark.parametrize(
    "args", [["nightly"], ["serve"], ["train"], ["demo"], ["refresh", "."], ["calibrate", "latest"], ["deployments", "yaml"]]
)
def test_a_missing_configuration_named_by_the_environment_is_refused_everywhere(tmp_path, args):
    result = cxr(tmp_path, *args, extra_env={"CXR_CONFIG": "/nonexistent/cxr.yaml"})
    assert_one_line_error(result, "configuration file not found: /nonexistent/cxr.yaml", "demo, seed004, small-real")
    assert not (tmp_path / "cxr.db").exists()


def test_an_invalid_configuration_named_by_the_environment_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  image_size: 3\n")
    assert_one_line_error(
        cxr(tmp_path, "nightly", extra_env={"CXR_CONFIG": str(bad)}), "invalid configuration", "data.image_size"
    )


def test_the_configuration_is_option_else_environment_else_demo(tmp_path):
    """``cxr deployments yaml`` prints the parameters of the configuration that applies."""
    import yaml

    def image_size(*args: str, **env: str) -> int:
        result = cxr(tmp_path, "deployments", "yaml", *args, extra_env=env)
        assert result.returncode == 0, result.stderr
        return yaml.safe_load(result.stdout)["deployments"][0]["parameters"]["data"]["image_size"]

    shipped = {
        name: yaml.safe_load((REPO_ROOT / "configs" / f"{name}.yaml").read_text())["data"]["image_size"]
        for name in ("demo", "seed004")
    }
    assert shipped["demo"] != shipped["seed004"]
    assert image_size() == shipped["demo"]
    assert image_size(CXR_CONFIG="seed004") == shipped["seed004"]
    assert image_size("--config", "configs/demo.yaml", CXR_CONFIG="seed004") == shipped["demo"]
    assert image_size("--config", str(REPO_ROOT / "configs" / "seed004.yaml")) == shipped["seed004"]


def test_help_shows_the_configuration_that_applies(tmp_path):
    plain = cxr(tmp_path, "train", "--help", extra_env={"COLUMNS": "300"})
    assert "[default: (demo)]" in plain.stdout
    custom = cxr(tmp_path, "nightly", "--help", extra_env={"COLUMNS": "300", "CXR_CONFIG": "/etc/cxr/night.yaml"})
    assert "[default: ($CXR_CONFIG=/etc/cxr/night.yaml)]" in custom.stdout


def _flow_runs(name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def read():
        async with get_client() as client:
            return await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[name])))

    return asyncio.run(read())


def _wait(condition, timeout: float, process: subprocess.Popen, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := condition()) is not None:
            return found
        assert process.poll() is None, f"exited with {process.returncode} before {what}: {process.stderr.read()[-3000:]}"
        time.sleep(0.5)
    raise TimeoutError(what)


@pytest.mark.slow
def test_ctrl_c_during_a_flow_ends_the_run_and_exits_130(prefect_server, tmp_path):
    from prefect.settings import PREFECT_API_URL

    before = {run.id for run in _flow_runs("cxr-synthesize")}
    process = _start(tmp_path, "synth", str(tmp_path / "data"), "--studies", "50000", PREFECT_API_URL=PREFECT_API_URL.value())
    run = _wait(
        lambda: next((r for r in _flow_runs("cxr-synthesize") if r.id not in before and r.state_name == "Running"), None),
        300,
        process,
        "the flow run is running",
    )
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)  # the target is 10 s; measured by hand (docs/configuration.md)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    ended = next(r for r in _flow_runs("cxr-synthesize") if r.id == run.id)
    assert ended.state_type.value in ("CANCELLED", "CRASHED"), ended.state


def test_sigterm_stops_the_scoring_service_cleanly(tmp_path):
    assert cxr(tmp_path, "db", "upgrade").returncode == 0
    port = free_port()
    process = _start(tmp_path, "api", "--port", str(port))
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", 180, process)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr


@pytest.mark.slow
def test_sigterm_stops_cxr_serve_cleanly(prefect_server, tmp_path):
    from prefect.settings import PREFECT_API_URL

    process = _start(tmp_path, "serve", PREFECT_API_URL=PREFECT_API_URL.value())
    try:
        _wait(lambda: True if _served() else None, 300, process, "the deployments are served")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr


def _served() -> bool:
    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            return [d.name for d in await client.read_deployments()]

    return any(name.endswith("-served") for name in asyncio.run(read()))


def test_only_db_upgrade_migrates_other_commands_say_what_to_run(tmp_path):
    from sqlalchemy import text

    from db.engine import _head_revisions, get_engine

    assert cxr(tmp_path, "db", "upgrade", "--revision", "0008").returncode == 0
    url = f"sqlite:///{tmp_path.resolve() / 'cxr.db'}"
    for args in (["models", "list"], ["runs"], ["report"], ["score"]):
        assert_one_line_error(cxr(tmp_path, *args), "is at revision 0008", "run cxr db upgrade")
    with get_engine(url).connect() as conn:
        assert conn.execute(text("select version_num from alembic_version")).scalar_one() == "0008"  # untouched
    assert cxr(tmp_path, "db", "upgrade").returncode == 0
    assert cxr(tmp_path, "models", "list").returncode == 0
    with get_engine(url).connect() as conn:
        assert {conn.execute(text("select version_num from alembic_version")).scalar_one()} == set(_head_revisions())
