"""A user's mistake through the real ``cxr`` process: one line on stderr, exit status 2, no
traceback (``--debug`` shows it), and no run left behind; every option documents itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest
import typer

REPO_ROOT = Path(__file__).resolve().parent.parent


def cxr(home: Path, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m flows.cli ARGS`` in a fresh process, with ``home`` as CXR_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CXR_", "PREFECT_API_URL"))}
    env.update({"CXR_HOME": str(home), "PYTHONPATH": str(REPO_ROOT), **(extra_env or {})})
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A state folder whose database exists and is empty."""
    home = tmp_path_factory.mktemp("cxr-home")
    assert cxr(home, "db", "upgrade").returncode == 0
    return home


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "--config", "configs/seed004.yml"], ["configuration file not found: configs/seed004.yml"]),
        (["refresh", "/no/such/folder", "--source", "synthetic"], ["source folder /no/such/folder does not exist"]),
        (["refresh", ".", "--incoming", "/no/such/incoming"], ["incoming folder /no/such/incoming"]),
        (["nightly", "--source-dir", "/no/such/night"], ["source folder /no/such/night"]),
        (["calibrate", "9999"], ["no model version '9999'", "cxr models list"]),
        (["evaluate", "no-such-model"], ["no model version 'no-such-model'"]),
        (["models", "show", "latest"], ["no model versions yet"]),
        (["score"], ["no champion yet"]),
        (["similar", "00000001_000.png"], ["no champion yet"]),
        (["evaluate", "champion"], ["no champion yet"]),
        (["report"], ["no evaluations yet"]),
        (["report", "77"], ["no evaluation '77'"]),
        (["train"], ["no labelled studies yet"]),
    ],
)
def test_a_mistake_is_one_line_and_exit_status_2(home, args, fragments):
    assert_one_line_error(cxr(home, *args), *fragments)


def test_a_missing_database_is_named_not_created(tmp_path):
    result = cxr(tmp_path / "typo", "models", "list")
    assert_one_line_error(result, "no database at", "typo")
    assert not (tmp_path / "typo" / "cxr.db").exists()


def test_an_invalid_configuration_names_the_key(home, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 0\n")
    assert_one_line_error(cxr(home, "train", "--config", str(bad)), "invalid configuration", "train.epochs")


def test_an_unknown_source_lists_the_choices(home):
    result = cxr(home, "refresh", ".", "--source", "bogus")
    assert_one_line_error(result, "--source", "'bogus'", "nih-local", "synthetic", "huggingface", "cxr refresh --help")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["models", "list", "--bogus"], ["No such option: --bogus", "cxr models list --help"]),
        (["calibrate"], ["Missing argument", "cxr calibrate --help"]),
        (["train", "--epochs", "many"], ["--epochs", "valid integer"]),
    ],
)
def test_a_usage_mistake_is_one_line_too(home, args, fragments):
    assert_one_line_error(cxr(home, *args), *fragments)


def test_help_and_a_bare_group_still_print_help(home):
    assert cxr(home, "--help").returncode == 0 and "Usage: cxr" in cxr(home, "--help").stdout
    bare = cxr(home, "models")
    assert bare.returncode == 2 and "Usage: cxr models" in bare.stdout + bare.stderr
    assert "Traceback" not in bare.stdout + bare.stderr


def test_debug_shows_the_traceback(home):
    result = cxr(home, "--debug", "calibrate", "9999")
    assert result.returncode != 0 and "Traceback" in result.stderr and "NotFound" in result.stderr
    after = cxr(home, "calibrate", "9999", "--debug")  # anywhere on the line
    assert "Traceback" in after.stderr


def test_read_only_commands_never_start_prefect(home):
    for args in (["models", "list"], ["runs"], ["models", "history"]):
        result = cxr(home, *args)
        assert result.returncode == 0, result.stderr
        assert "prefect" not in (result.stdout + result.stderr).lower()


def _commands(group, prefix: str = ""):
    """Every leaf command of typer's click command tree, by its path (``models list``). typer
    runs on its own copy of click, so groups are told apart by click's public interface (a group
    has ``commands``), never by the separate click package's classes."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def test_every_option_has_help_and_no_literal_backticks():
    from flows.cli import app

    root = typer.main.get_command(app)
    commands = dict(_commands(root))
    assert {"train", "models list", "db upgrade", "reports serve", "deployments yaml"} <= set(commands)
    checked = {"option": 0, "argument": 0}
    for name, command in commands.items():
        assert command.help and "``" not in command.help, name
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                assert param.help and "``" not in param.help, f"{name} {param.opts}"
                checked["option"] += 1
            elif param.param_type_name == "argument":
                assert getattr(param, "help", None), f"{name} {param.name}"
                checked["argument"] += 1
    assert checked["option"] > 30 and checked["argument"] > 5, checked


def test_the_option_help_check_can_fail():
    """An option without help is caught: the check above sees typer's parameters."""
    probe = typer.Typer()

    @probe.command()
    def first(value: Annotated[int, typer.Option()] = 1, name: Annotated[str, typer.Argument(help="A name.")] = "x") -> None:
        """A command with one undocumented option."""

    @probe.command()
    def second() -> None:
        """Another command, so the probe is a group."""

    commands = dict(_commands(typer.main.get_command(probe)))
    undocumented = [p.name for p in commands["first"].params if p.param_type_name == "option" and not p.help]
    assert undocumented == ["value"]
