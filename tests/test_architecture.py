"""The layering holds: the ML library and the report renderer never reach into orchestration or
the database, Prefect tasks never reach into the flows that call them, no two modules import
each other (directly or round a longer loop), and no module grows past what one reader can hold
(400 lines).

The cycle check is static (``ast``) and counts every import that can run: module level and
inside functions alike (a function-level import that closes a loop is still a loop, only a
deferred one). Imports under ``if TYPE_CHECKING:`` never run and are not counted."""

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
    # the HTTP service answers from cxrmodel and db alone: no Prefect in a request's path (its
    # settings come from deployments.settings, checked below)
    "api": {"prefect", "prefect_dask", "tasks", "flows"},
    # a task is called by flows; importing one back would be a layering loop
    "tasks": {"flows"},
}
#: The packages whose modules form the import graph the cycle check walks.
PROJECT = ("cxrmodel", "db", "tasks", "flows", "reports", "deployments", "api", "configs")


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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in _python_files(*PROJECT) if "migrations" not in p.parts}


def _imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere but under ``if TYPE_CHECKING:`` (``from a
    import b`` counts ``a.b`` when it is a module, else ``a``; relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - child.level + 1] + ([child.module] if child.module else []))
                found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    resolved = set()
    for module in found:
        while module and module not in modules:  # a name inside a module: the module
            module = module.rpartition(".")[0]
        if module and module != name:
            resolved.add(module)
    return resolved


def _import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    import sys

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return cycles


def test_no_import_cycle_between_the_project_modules():
    modules = _project_modules()
    graph = {name: _imported_modules(name, path, modules) for name, path in modules.items()}
    assert sum(map(len, graph.values())) > 100, "the import graph is implausibly small: the scan is broken"
    assert _import_cycles(graph) == []


def test_the_cycle_check_finds_a_loop_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import thing\n")
    (pkg / "b.py").write_text("def thing():\n    from . import a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    modules = {"pkg": pkg / "__init__.py", "pkg.a": pkg / "a.py", "pkg.b": pkg / "b.py", "pkg.c": pkg / "c.py"}
    graph = {name: _imported_modules(name, path, modules) for name, path in modules.items()}
    assert graph["pkg.c"] == set()
    assert _import_cycles(graph) == [["pkg.a", "pkg.b"]]


def test_the_service_reads_only_the_settings_of_the_deployments():
    """``api`` may read ``deployments.settings`` (pydantic only), never the deployment definitions."""
    modules = _project_modules()
    reached = {
        str(path.relative_to(ROOT)): sorted(m for m in _imported_modules(name, path, modules) if m.split(".")[0] == "deployments")
        for name, path in modules.items()
        if name.split(".")[0] == "api"
    }
    assert {k: v for k, v in reached.items() if set(v) - {"deployments", "deployments.settings"}} == {}
