"""The built wheel carries the shipped configurations, and an installed ``cxr`` finds them from
any working folder (``importlib.resources``, not a path relative to the checkout)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("demo", "seed004", "small-real")


PACKAGES = ("cxrmodel", "tasks", "flows", "db", "reports", "deployments", "api", "configs")


def _build_wheel(work: Path) -> Path:
    """``pip wheel`` (no dependencies; the environment's setuptools) of a copy of the project's
    packaging inputs, so the build leaves nothing in the checkout."""
    source = work / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, source / package, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    out = work / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source), "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = out.glob("cxr_pipeline-*.whl")
    return wheel


def test_an_installed_wheel_finds_its_configurations_outside_the_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {f"configs/{name}.yaml" for name in SHIPPED} | {"configs/__init__.py"} <= names
        site = tmp_path / "site"
        archive.extractall(site)  # what installing a pure-Python wheel does
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CXR_", "PREFECT_API_URL"))}
    env.update({"PYTHONPATH": str(site), "CXR_HOME": str(tmp_path / "home")})

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)

    where = run("-c", "import configs, flows.cli; print(configs.__file__); print(flows.cli.__file__)")
    assert where.returncode == 0, where.stderr[-3000:]
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout

    expected = yaml.safe_load((REPO_ROOT / "configs" / "small-real.yaml").read_text())["data"]["image_size"]
    for given in (["--config", "small-real"], ["--config", "configs/small-real.yaml"]):
        result = run("-m", "flows.cli", "deployments", "yaml", *given)
        assert result.returncode == 0, result.stderr[-3000:]
        assert yaml.safe_load(result.stdout)["deployments"][0]["parameters"]["data"]["image_size"] == expected
    default = run("-m", "flows.cli", "deployments", "yaml")
    assert default.returncode == 0, default.stderr[-3000:]
    demo = yaml.safe_load((REPO_ROOT / "configs" / "demo.yaml").read_text())["data"]["image_size"]
    assert yaml.safe_load(default.stdout)["deployments"][0]["parameters"]["data"]["image_size"] == demo
