"""What every ``cxr`` command shares: the state folder, the configuration file, the Prefect
server to talk to, references resolved to ids, and one line on stderr for a user's mistake.

Nothing here imports torch, and Prefect only once a flow command has checked its inputs: a
command that only reads the database never pays for them, and a flow command checks its inputs (configuration, folders, names) before Prefect
starts, so a typo costs a fraction of a second and leaves no run behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import urllib.request
from pathlib import Path

import typer

from cxrmodel.config import PipelineConfig, load_pipeline_config
from cxrmodel.errors import UserError
from cxrmodel.io import MissingInputError, require_folder
from deployments.settings import Settings, Workspace, resolve_config

#: Where ``prefect server start`` listens by default.
DEFAULT_LOCAL_API = "http://127.0.0.1:4200/api"
#: Seconds a temporary server may take to start; Prefect's own 20 s fails on a busy 2-core host.
EPHEMERAL_STARTUP_TIMEOUT = 180


#: Prefect settings this command chose (:func:`use_running_prefect_server`), held until it ends.
_prefect_settings = contextlib.ExitStack()

#: This process's command: ``--debug`` given, and the home it works in (where error logs go).
_state: dict = {"debug": False, "home": None}


def settings(home: Path | None) -> Settings:
    """The ``CXR_*`` settings, with ``--home`` (when given) as the state folder. Nothing is
    written to the environment: the flows get the workspace as parameters
    (:func:`workspace`)."""
    state = Settings(home=home) if home is not None else Settings()
    _state["home"] = state.resolved_home
    return state


def workspace(home: Path | None) -> Workspace:
    """The home folder and database URL this command works in (``--home``, else the ``CXR_*``
    settings), as the value passed to every flow."""
    return settings(home).workspace


def pipeline_config(given: str | Path | None) -> PipelineConfig:
    """The validated configuration that applies (``--config``, else ``CXR_CONFIG``, else the
    shipped default: :func:`deployments.settings.resolve_config`); a missing or invalid file is
    a :class:`UserError`."""
    import yaml
    from pydantic import ValidationError

    path = resolve_config(given)
    try:
        return load_pipeline_config(path)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UserError(f"invalid configuration {path}: {where}: {first['msg']} ({exc.error_count()} error(s))") from exc
    except MissingInputError:
        raise
    except (OSError, ValueError, yaml.YAMLError) as exc:  # unreadable file, YAML syntax error
        raise UserError(f"cannot read configuration {path}: {str(exc).splitlines()[0]}") from exc


def folder(path: Path | None, what: str) -> str | None:
    """``path`` as a string when it is a folder (``None`` stays ``None``); else a :class:`UserError`."""
    return None if path is None else str(require_folder(path, what))


def _answers(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:  # noqa: S310 - a local http URL
            return response.status == 200
    except (OSError, ValueError):
        return False


def use_running_prefect_server(probe_timeout: float = 0.5) -> str | None:
    """Point this command's Prefect client at a running server and return its API URL: the
    configured ``PREFECT_API_URL`` (environment, profile, or a test harness) when there is one,
    else ``prefect server start``'s default local address when it answers ``/api/health``. With
    neither, return ``None``: Prefect then starts one temporary server for the process, given
    :data:`EPHEMERAL_STARTUP_TIMEOUT` seconds to come up (unless
    ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` says otherwise). The choice is made
    with Prefect's own :func:`prefect.settings.temporary_settings`, held for the rest of the
    command; the process environment is left as it was."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    url = PREFECT_API_URL.value()
    updates: dict = {}
    if "PREFECT_SERVER_ANALYTICS_ENABLED" not in os.environ:
        updates[PREFECT_SERVER_ANALYTICS_ENABLED] = False
    if not url and _answers(DEFAULT_LOCAL_API, probe_timeout):
        url = updates[PREFECT_API_URL] = DEFAULT_LOCAL_API
    elif not url and "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" not in os.environ:
        updates[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = EPHEMERAL_STARTUP_TIMEOUT
    if updates:
        _prefect_settings.enter_context(temporary_settings(updates=updates))
    return url


class _NoConsoleTracebacks(logging.Filter):
    """Drops the traceback from a console log record (the command ends with its one line, and
    the log file it names holds the traceback; the Prefect UI still gets it from the API log
    handler, which this filter is not on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            record.exc_info, record.exc_text = None, None
        return True


def quiet_console_tracebacks() -> None:
    """Keep an error inside a flow run to one line on the terminal (not with ``--debug``)."""
    if _state["debug"]:
        return
    import prefect.main  # noqa: F401 - configures Prefect's logging handlers
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler) and not any(
                isinstance(f, _NoConsoleTracebacks) for f in handler.filters
            ):
                handler.addFilter(_NoConsoleTracebacks())


def prepare_flow_command() -> None:
    """Before the first Prefect import of a command that runs flows: reuse a running server when
    there is one, keep tracebacks off the console, and end the process without finalising the
    heavy modules a flow command loads."""
    use_running_prefect_server()
    quiet_console_tracebacks()
    skip_interpreter_finalization()


def database_url(home: Path | None, must_exist: bool = True) -> str:
    """The database URL, checked to be at the newest schema revision (never migrated here: only
    ``cxr db upgrade`` does that; otherwise a :class:`UserError` says to run it). With
    ``must_exist``, a SQLite file that is not there yet is a :class:`UserError` (a command that
    only reads should not create an empty database under a mistyped ``--home``)."""
    from db.engine import require_current_schema

    url = settings(home).resolved_database_url
    if must_exist and url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            raise UserError(f"no database at {path} yet: run cxr demo (or cxr db upgrade), or give --home")
    require_current_schema(url)
    return url


def model_version_id(home: Path | None, ref: str) -> int:
    """The id of the model version ``ref`` names (id, name, ``latest`` or ``champion``)."""
    from db import lookup
    from db.engine import session_scope

    with session_scope(database_url(home)) as session:
        return lookup.model_version(session, ref).id


def evaluation_id(home: Path | None, ref: str) -> int:
    """The id of the evaluation ``ref`` names (id or ``latest``)."""
    from db import lookup
    from db.engine import session_scope

    with session_scope(database_url(home)) as session:
        return lookup.evaluation(session, ref).id


def require_champion(home: Path | None) -> None:
    """A :class:`UserError` unless there is a champion (what scoring and retrieval use)."""
    model_version_id(home, "champion")


def _debug_requested(argv: list[str]) -> tuple[list[str], bool]:
    debug = "--debug" in argv or os.environ.get("CXR_DEBUG") == "1"
    return [arg for arg in argv if arg != "--debug"], debug


_skip_finalization = False


def skip_interpreter_finalization() -> None:
    """Ask :func:`exit_process` to end the process without tearing the interpreter down: after
    a flow command has loaded torch, torchvision and Prefect, finalising their thousands of
    modules takes about 2 s on 2 cores, every command. ``CXR_FAST_EXIT=0`` keeps the normal exit."""
    global _skip_finalization
    _skip_finalization = os.environ.get("CXR_FAST_EXIT", "1") != "0" and not _state["debug"]


def exit_process(code: int | str | None, script: bool = True) -> None:
    """End the ``cxr`` process with ``code`` (``SystemExit``'s convention). When asked by
    :func:`skip_interpreter_finalization`: run the atexit handlers first (Prefect drains its log
    and event workers there; ``logging.shutdown`` flushes the handlers), flush stdout and
    stderr, then ``os._exit``. Every file and database write is closed by then: the commands
    write through context managers (``session_scope``, ``atomic_write``). Called from Python
    (``script=False``), it only raises ``SystemExit``."""
    if not (_skip_finalization and script):
        raise SystemExit(code)
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    import atexit

    atexit._run_exitfuncs()  # noqa: SLF001 - CPython's own hook, what interpreter exit runs first
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code or 0)


def stop_on_sigterm() -> None:
    """SIGTERM (what ``kill``, systemd and container runtimes send) ends a long-running command
    (``cxr serve``, ``cxr api``) with exit status 0: a requested stop is not a failure. The
    servers shut down gracefully on their own handlers first (uvicorn re-raises the signal once
    it is done, which lands here; Prefect's runner pauses its served deployments)."""
    import signal

    def stop(signum, frame):
        raise typer.Exit(0)

    signal.signal(signal.SIGTERM, stop)


def _is_usage_error(exc: BaseException) -> bool:
    """A click error raised while typer parsed the command line (a usage mistake, a bad value).
    typer vendors click under a private module, so these are recognised by click's documented
    interface (``exit_code`` and ``format_message()``), never by a private class path."""
    return isinstance(getattr(exc, "exit_code", None), int) and callable(getattr(exc, "format_message", None))


def _log_folder() -> Path:
    """Where a full traceback is written: ``<home>/logs`` (``--home`` or ``CXR_HOME``), or the
    temporary folder when the home cannot be read from the settings or written."""
    try:
        folder = (_state["home"] or Settings().resolved_home) / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    except Exception:  # noqa: BLE001 - invalid CXR_* settings or an unwritable home: still log somewhere
        import tempfile

        return Path(tempfile.gettempdir())


def _write_traceback(exc: BaseException) -> Path:
    """The full traceback of ``exc`` in a new log file; its path."""
    import time
    import traceback

    path = _log_folder() / f"cxr-error-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}.log"
    path.write_text(f"cxr {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(exc)), encoding="utf-8")
    return path


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text[:300]}"


def run_cli(invoke, argv: list[str] | None = None):
    """``invoke(args)`` (the typer app, not standalone, on the command line's arguments), every
    ending made one line on stderr:

    - a :class:`UserError` (a missing file or folder, an unknown name, no champion) or a usage
      mistake (an unknown option, a value outside its choices, which are listed): exit status 2;
    - an unexpected error (an unreachable database, a tampered file): its type and message, and
      the log file holding the full traceback; exit status 1;
    - Ctrl-C: exit status 130 (typer turns ``KeyboardInterrupt`` into ``typer.Exit(130)``);
    - a closed standard output (``cxr --help | head -1``): typer silences it.

    ``--debug`` (anywhere on the line) or ``CXR_DEBUG=1`` shows the traceback instead. Returns
    the exit status (``None`` for success)."""
    args, debug = _debug_requested(list(sys.argv[1:] if argv is None else argv))
    _state["debug"] = debug
    try:
        return invoke(args)
    except UserError as exc:
        if debug:
            raise
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # raised outside typer's own handling (during start-up or shutdown)
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if _is_usage_error(exc):
            if type(exc).__name__ == "NoArgsIsHelpError":  # a group called bare: its help, as click does
                exc.show()
                return 2
            ctx = getattr(exc, "ctx", None)
            hint = f" (see {ctx.command_path} --help)" if ctx is not None and exc.exit_code == 2 else ""
            print(f"error: {' '.join(exc.format_message().split())}{hint}", file=sys.stderr)
            return exc.exit_code
        if debug:
            raise
        print(f"error: {_one_line(exc)} (full traceback in {_write_traceback(exc)}; --debug shows it)", file=sys.stderr)
        return 1
