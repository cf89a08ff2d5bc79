"""The Prefect layer only wraps: no file of ``tasks/`` builds a query or talks to a session
itself. Every read and write goes through a function of ``db/`` (the store), every piece of
domain logic through ``cxrmodel``; a task adds retries, logging and artifacts."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TASKS = Path(__file__).resolve().parent.parent / "tasks"
#: SQLAlchemy statement builders a task must not call.
STATEMENTS = {"select", "insert", "update", "delete", "text"}
#: Names a session goes by (any method called on one is a query or a write: ``query``, ``get``,
#: ``scalars``, ``add``, ...).
SESSIONS = {"session", "s", "sess"}


def _offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sqlalchemy":
            if node.module != "sqlalchemy.exc":  # the exception types of the retry rule are fine
                found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "sqlalchemy" for a in node.names):
            found.append(f"line {node.lineno}: import sqlalchemy")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in STATEMENTS:
                found.append(f"line {node.lineno}: {func.id}(...)")
            elif isinstance(func, ast.Attribute) and func.attr == "execute":  # a session's, a connection's
                found.append(f"line {node.lineno}: .{func.attr}(...)")
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in SESSIONS:
                found.append(f"line {node.lineno}: {func.value.id}.{func.attr}(...)")
    return sorted(found, key=lambda f: (int(f.split()[1].rstrip(":")), f))


@pytest.mark.parametrize("path", sorted(TASKS.glob("*.py")), ids=lambda p: p.name)
def test_task_module_leaves_every_query_to_the_store(path):
    assert _offences(path) == []


def test_the_scan_sees_queries(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from sqlalchemy import select\n"
        "def f(session):\n"
        "    session.query(A).all()\n"
        "    session.execute(select(A))\n"
        "    session.get(A, 1)\n"
    )
    assert _offences(probe) == [
        "line 1: from sqlalchemy import ...",
        "line 3: session.query(...)",
        "line 4: .execute(...)",
        "line 4: select(...)",
        "line 5: session.get(...)",
    ]
