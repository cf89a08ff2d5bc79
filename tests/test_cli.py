"""The ``cxr`` command line: every command documents itself, and the quick ones work."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect
from typer.testing import CliRunner

from db.engine import get_engine
from flows.cli import app

COMMANDS = ["demo", "synth", "refresh", "train", "calibrate", "evaluate", "score", "report", "similar", "serve"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and command in result.output


def test_top_level_help_lists_all_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in [*COMMANDS, "db"]:
        assert command in result.output


def test_db_upgrade_creates_schema(tmp_path, monkeypatch):
    monkeypatch.delenv("CXR_DATABASE_URL", raising=False)
    result = CliRunner().invoke(app, ["db", "upgrade", "--home", str(tmp_path)])
    assert result.exit_code == 0, result.output
    tables = set(inspect(get_engine(f"sqlite:///{tmp_path.resolve() / 'cxr.db'}")).get_table_names())
    assert {"studies", "predictions", "model_versions", "class_metrics"} <= tables
