"""``cxr models ...`` and ``cxr runs``: the registry and the recent runs, read from the database
alone (no Prefect server, no torch), as rich tables or JSON."""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_support import database_url

models_app = typer.Typer(help="The model registry: list and show versions, pin a champion, roll back.", no_args_is_help=True)

HomeOption = Annotated[Path | None, typer.Option("--home", help="State folder (default: $CXR_HOME or .cxr).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ReasonOption = Annotated[str, typer.Option("--reason", "-r", help="Why (kept in the promotion history).")]
VersionArgument = Annotated[str, typer.Argument(help="Model version: id, name, latest or champion.")]


class RunTrigger(enum.StrEnum):
    """``cxr runs --trigger``: the values of :class:`db.statuses.ScoringTrigger` (not imported
    here, so ``--help`` stays free of the database modules)."""

    batch = "batch"
    on_demand = "on_demand"


def _figure(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _print_table(title: str, columns: list[str], rows: list[list[str]], no_wrap: tuple[str, ...] = ()) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=column in no_wrap)
    for row in rows:
        table.add_row(*row)
    Console(width=max(160, Console().width)).print(table)


def _echo_json(value) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _session(home: Path | None):
    from db.engine import session_scope

    return session_scope(database_url(home))


@models_app.command("list")
def models_list(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Every model version: id, name, kind, status, validation figures (best epoch) and its
    newest test evaluation (macro AUROC with its 95 % CI, macro F1)."""
    from db.lookup import model_summaries

    with _session(home) as session:
        rows = model_summaries(session)
    if as_json:
        _echo_json([dataclasses.asdict(r) for r in rows])
        return
    if not rows:
        typer.echo("no model versions yet: cxr train (or cxr demo) makes some")
        return
    table = []
    for r in rows:
        ci = r.test_macro_auroc_ci
        auroc = _figure(r.test_macro_auroc) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci[0] is not None else "")
        status = r.status + (" (pinned)" if r.pinned else "")
        table.append(
            [
                str(r.id),
                r.name,
                r.kind,
                status,
                _figure(r.val_macro_f1),
                _figure(r.val_macro_auroc),
                "-" if r.selection_score is None else f"{r.selection_score:.3f} ({r.selection_basis})",
                auroc,
                _figure(r.test_macro_f1),
                "-" if r.test_evaluation_id is None else str(r.test_evaluation_id),
            ]
        )
    columns = ["id", "name", "kind", "status", "val F1", "val AUROC", "chosen on", "test AUROC [95% CI]", "test F1", "eval"]
    _print_table(
        "Model versions (val: best epoch; test: newest evaluation)", columns, table, no_wrap=("id", "test AUROC [95% CI]")
    )


@models_app.command("show")
def models_show(ref: VersionArgument = "champion", home: HomeOption = None, as_json: JsonOption = False) -> None:
    """One model version: its registry row, figures and configuration."""
    from db import lookup

    with _session(home) as session:
        version = lookup.model_version(session, ref)
        summary = next(s for s in lookup.model_summaries(session) if s.id == version.id)
    info = {
        **dataclasses.asdict(summary),
        "artifact_path": version.artifact_path,
        "parameter_count": version.parameter_count,
        "config": version.config,
    }
    if as_json:
        _echo_json(info)
        return
    for key, value in info.items():
        if key != "config":
            typer.echo(f"{key:22} {value}")
    typer.echo("config:")
    typer.echo(json.dumps(version.config, indent=2, default=str))


def _registry_change(home: Path | None, change) -> None:
    """Run one registry change in its own transaction; a refused change exits with status 1."""
    from db.registry import RegistryError

    try:
        with _session(home) as session:
            typer.echo(change(session))
    except RegistryError as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(1) from exc


@models_app.command("pin")
def models_pin(ref: VersionArgument, reason: ReasonOption = "pinned by hand", home: HomeOption = None) -> None:
    """Make a model version the champion and keep it there (automatic promotion skips it)."""
    from db import lookup
    from db.registry import pin

    _registry_change(home, lambda s: f"champion: {pin(s, lookup.model_version(s, ref).name, reason).name} (pinned)")


@models_app.command("unpin")
def models_unpin(reason: ReasonOption = "unpinned by hand", home: HomeOption = None) -> None:
    """Let automatic promotion replace the champion again."""
    from db.registry import unpin

    _registry_change(home, lambda s: f"champion: {unpin(s, reason).name} (not pinned)")


@models_app.command("rollback")
def models_rollback(reason: ReasonOption = "rolled back by hand", home: HomeOption = None) -> None:
    """Bring back the champion the current one replaced (pinned, so it stays)."""
    from db.registry import rollback

    _registry_change(home, lambda s: f"champion: {rollback(s, reason).name} (pinned)")


@models_app.command("history")
def models_history(home: HomeOption = None) -> None:
    """Every champion change, newest first."""
    from db.registry import history

    def show(session) -> str:
        return (
            "\n".join(
                f"{h['at']:%Y-%m-%d %H:%M:%S}  {h['action']:8}  {h['champion']}  (was {h['previous'] or '-'})  {h['reason']}"
                for h in history(session)
            )
            or "no promotions yet"
        )

    _registry_change(home, show)


def runs(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many runs to list, newest first.")] = 20,
    trigger: Annotated[
        RunTrigger | None,
        typer.Option(help="Only on_demand scoring runs (requests to cxr api), or only batch work (everything else)."),
    ] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recent refresh, training, evaluation and scoring runs with their trigger, status and counts."""
    from db.lookup import recent_runs

    with _session(home) as session:
        rows = recent_runs(session, limit, trigger.value if trigger is not None else None)
    if as_json:
        _echo_json([dataclasses.asdict(r) for r in rows])
        return
    if not rows:
        typer.echo("no runs yet: cxr demo, or cxr refresh DIR")
        return
    table = [
        [
            r.kind,
            str(r.id),
            r.trigger,
            r.status,
            f"{r.started_at:%Y-%m-%d %H:%M:%S}",
            _duration(r.started_at, r.finished_at),
            r.counts,
        ]
        for r in rows
    ]
    columns = ["kind", "id", "trigger", "status", "started", "seconds", "counts"]
    _print_table("Recent runs", columns, table, no_wrap=("started",))


def _duration(started, finished) -> str:
    if finished is None:
        return "-"
    return f"{(finished - started).total_seconds():.0f}"
