"""The layering holds: the ML library and the report renderer never reach into orchestration or
the database, and no module grows past what one reader can hold (400 lines)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 400

#: package -> top-level modules it must never import (directly or inside a function).
FORBIDDEN = {
    "cxrmodel": {"prefect", "prefect_dask", "sqlalchemy", "alembic", "db", "tasks", "flows", "reports", "deployments"},
    "reports": {"prefect", "prefect_dask", "sqlalchemy", "alembic", "db", "tasks", "flows", "deployments"},
    # the HTTP service answers from cxrmodel and db alone: no Prefect in a request's path
    "api": {"prefect", "prefect_dask", "tasks", "flows", "deployments"},
}


def _python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_never_imports_orchestration_or_the_database(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_roots(path) & FORBIDDEN[package]) for path in _python_files(package)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_boundary_check_sees_function_level_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from prefect import flow\n    import sqlalchemy.orm\n")
    assert _imported_roots(probe) == {"prefect", "sqlalchemy"}


def test_no_module_outside_the_migrations_exceeds_400_lines():
    folders = ("cxrmodel", "db", "tasks", "flows", "reports", "deployments", "tests", "bench", "api")
    too_long = {
        str(path.relative_to(ROOT)): n
        for path in _python_files(*folders)
        if "migrations" not in path.parts and (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert too_long == {}


def test_the_data_stages_and_read_only_commands_import_no_torch():
    """``cxr refresh``/``cxr synth`` (flows.refresh) and the registry commands load neither torch
    nor the model code: half of a flow command's import time, and all of a listing's."""
    import os
    import subprocess
    import sys

    probe = (
        "import sys, flows.refresh, flows.cli_registry; print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
