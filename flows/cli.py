"""``cxr``: the command line. Every command runs its Prefect flow."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

# The temporary Prefect server a command starts would otherwise try to send telemetry.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from cxrmodel.config import PipelineConfig, Settings, SynthConfig, load_pipeline_config

app = typer.Typer(help="Chest X-ray pipeline (research tool, not a medical device).", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")
models_app = typer.Typer(help="The model registry: list versions, pin a champion, roll back.", no_args_is_help=True)
app.add_typer(models_app, name="models")
deployments_app = typer.Typer(
    help="The shipped deployments (nightly run, weekly retrain, on-demand scoring and reports).", no_args_is_help=True
)
app.add_typer(deployments_app, name="deployments")
reports_app = typer.Typer(help="The HTML reports.", no_args_is_help=True)
app.add_typer(reports_app, name="reports")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.yaml"

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Pipeline YAML (data, train, thresholds).")]
HomeOption = Annotated[Path | None, typer.Option("--home", help="State folder (default: $CXR_HOME or .cxr).")]


def _settings(home: Path | None) -> Settings:
    if home is not None:
        os.environ["CXR_HOME"] = str(home)
    return Settings()


def _echo_json(result) -> None:
    """Print a flow's result (a dataclass) as indented JSON."""
    typer.echo(json.dumps(dataclasses.asdict(result), indent=2, default=str))


def _config(path: Path) -> PipelineConfig:
    if not path.is_file():
        typer.echo(f"error: configuration file not found: {path}", err=True)
        raise typer.Exit(2)
    return load_pipeline_config(path)


@db_app.command("upgrade")
def db_upgrade(home: HomeOption = None, revision: str = "head") -> None:
    """Create or migrate the schema (Alembic) at $CXR_DATABASE_URL."""
    from db.engine import upgrade_database

    settings = _settings(home)
    upgrade_database(settings.resolved_database_url, revision)
    typer.echo(f"database at {settings.resolved_database_url} is at revision {revision}")


def _registry_change(home: Path | None, change) -> None:
    """Run one registry change in its own transaction; a refused change exits with status 1."""
    from db.engine import session_scope
    from db.registry import RegistryError

    url = _settings(home).resolved_database_url
    try:
        with session_scope(url) as session:
            typer.echo(change(session))
    except RegistryError as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(1) from exc


ReasonOption = Annotated[str, typer.Option("--reason", "-r", help="Why (kept in the promotion history).")]


@models_app.command("list")
def models_list(home: HomeOption = None) -> None:
    """Every model version with its status, the figure it was chosen on (validation or
    cross-validation) and its newest test macro AUROC (95 % CI)."""
    from db.registry import list_versions

    def show(session) -> str:
        lines = [f"{'name':40} {'kind':16} {'status':10} {'pinned':6} {'chosen on':24} test macro AUROC [95% CI]"]
        for v in list_versions(session):
            auroc = "-" if v.macro_auroc is None else f"{v.macro_auroc:.3f}"
            if v.macro_auroc_ci[0] is not None:
                auroc += f" [{v.macro_auroc_ci[0]:.3f}, {v.macro_auroc_ci[1]:.3f}]"
            chosen = "-" if v.selection_score is None else f"{v.selection_score:.3f} ({v.selection_basis})"
            lines.append(f"{v.name:40} {v.kind:16} {v.status:10} {'yes' if v.pinned else '':6} {chosen:24} {auroc}")
        return "\n".join(lines)

    _registry_change(home, show)


@models_app.command("pin")
def models_pin(
    name: Annotated[str, typer.Argument(help="Model version name.")],
    reason: ReasonOption = "pinned by hand",
    home: HomeOption = None,
) -> None:
    """Make a model version the champion and keep it there (automatic promotion skips it)."""
    from db.registry import pin

    _registry_change(home, lambda s: f"champion: {pin(s, name, reason).name} (pinned)")


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


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the NIH-layout dataset into.")],
    studies: int = 2000,
    incoming: int = 200,
    image_size: int = 256,
    seed: int = 0,
) -> None:
    """Generate a synthetic dataset in the real NIH ChestX-ray14 layout."""
    from flows.stages import synthesize_flow

    summary = synthesize_flow(str(out), SynthConfig(n_studies=studies, n_incoming=incoming, image_size=image_size, seed=seed))
    _echo_json(summary)


@app.command()
def refresh(
    source_dir: Annotated[Path, typer.Argument(help="NIH-layout folder (Data_Entry_2017*.csv, images/).")],
    incoming: Annotated[Path | None, typer.Option(help="Folder of new PNG/DICOM studies to register.")] = None,
    source: Annotated[str, typer.Option(help="nih-local, synthetic or huggingface")] = "nih-local",
    hub_repo: Annotated[str | None, typer.Option(help="Hugging Face dataset repo id (source huggingface).")] = None,
    hub_revision: Annotated[str | None, typer.Option(help="Commit hash or tag to pin (source huggingface).")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    home: HomeOption = None,
) -> None:
    """Refresh studies from a dataset folder (and register incoming studies). With
    ``--source huggingface`` the folder is first filled from the Hub (HF_HUB_OFFLINE honoured)."""
    from cxrmodel.config import HubConfig
    from flows.stages import refresh_flow

    _settings(home)
    hub = HubConfig(repo_id=hub_repo, revision=hub_revision) if source == "huggingface" else None
    _echo_json(refresh_flow(str(source_dir), source, str(incoming) if incoming else None, _config(config).data, hub))


@app.command()
def train(
    config: ConfigOption = DEFAULT_CONFIG,
    epochs: int | None = None,
    knn_baseline: bool = True,
    mlp_baseline: bool = True,
    home: HomeOption = None,
) -> None:
    """Train seed 004's model on the training split (epoch progress is logged live), index the
    labelled studies' embeddings, and fit the k-NN and MLP embedding baselines."""
    from flows.stages import train_flow

    _settings(home)
    cfg = _config(config)
    train_cfg = cfg.train.model_copy(update={"epochs": epochs}) if epochs else cfg.train
    _echo_json(train_flow(cfg.data, train_cfg, knn_baseline, mlp_baseline))


@app.command()
def calibrate(model_version_id: int, config: ConfigOption = DEFAULT_CONFIG, home: HomeOption = None) -> None:
    """Fit per-finding thresholds of a model version on the validation split."""
    from flows.stages import calibrate_flow

    _settings(home)
    typer.echo(f"threshold set {calibrate_flow(model_version_id, _config(config).thresholds)}")


@app.command()
def evaluate(model_version_id: int, promote: bool = True, config: ConfigOption = DEFAULT_CONFIG, home: HomeOption = None) -> None:
    """Evaluate a model version on the test split; promote it if it beats the champion."""
    from flows.stages import evaluate_flow

    _settings(home)
    _echo_json(evaluate_flow(model_version_id, promote=promote, evaluation=_config(config).evaluation))


class TaskRunnerChoice(StrEnum):
    default = "default"
    dask = "dask"


@app.command()
def score(
    batch_size: int = 64,
    task_runner: Annotated[
        TaskRunnerChoice, typer.Option(help="default: chunks one after another here; dask: in parallel on a Dask cluster.")
    ] = TaskRunnerChoice.default,
    dask_address: Annotated[
        str | None, typer.Option(help="Scheduler of an existing Dask cluster, e.g. tcp://host:8786 (default: a local one).")
    ] = None,
    dask_workers: Annotated[int, typer.Option(min=1, help="Workers of the local Dask cluster.")] = 2,
    chunk_size: Annotated[int | None, typer.Option(min=1, help="Studies per scoring task (default: the flow's, 512).")] = None,
    home: HomeOption = None,
) -> None:
    """Score every study that has no prediction from the champion model."""
    from flows.stages import score_flow

    _settings(home)
    _echo_json(
        score_flow(
            batch_size=batch_size,
            task_runner=task_runner.value,
            dask_address=dask_address,
            dask_workers=dask_workers,
            **({"chunk_size": chunk_size} if chunk_size else {}),
        )
    )


@app.command()
def similar(
    study_key: Annotated[str, typer.Argument(help="Study key (image file name) of a labelled or incoming study.")],
    k: Annotated[int, typer.Option("--k", min=1, help="How many similar labelled studies to list.")] = 5,
    home: HomeOption = None,
) -> None:
    """List the labelled studies most similar to one study in the champion's embedding space."""
    from flows.stages import similar_flow

    _settings(home)
    rows = similar_flow(study_key, k)
    if not rows:
        typer.echo(f"no similar labelled studies found for {study_key}")
        return
    table = [("#", "study", "cosine", "split", "findings")] + [
        (str(i), r["study_key"], f"{r['cosine']:.3f}", str(r.get("split") or ""), r["findings_text"])
        for i, r in enumerate(rows, 1)
    ]
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    typer.echo(f"labelled studies most similar to {study_key}:")
    for row in table:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@app.command()
def report(evaluation_id: int, home: HomeOption = None) -> None:
    """Render the HTML evaluation report of one evaluation."""
    from flows.stages import report_flow

    _settings(home)
    typer.echo(report_flow(evaluation_id))


@app.command()
def demo(
    config: ConfigOption = DEFAULT_CONFIG,
    studies: int = 2000,
    incoming: int = 200,
    home: HomeOption = None,
) -> None:
    """Synthesise data, run the whole pipeline, and show where everything landed."""
    from flows.demo import run_demo

    settings = _settings(home)
    started = time.perf_counter()
    run_demo(settings, _config(config), SynthConfig(n_studies=studies, n_incoming=incoming))
    typer.echo(f"\ndemo finished in {time.perf_counter() - started:.0f} s")


@app.command()
def nightly(
    source_dir: Annotated[Path | None, typer.Option(help="NIH-layout folder to refresh (default: $CXR_SOURCE_DIR).")] = None,
    incoming: Annotated[Path | None, typer.Option(help="Folder of new studies to register (default: $CXR_INCOMING_DIR).")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    home: HomeOption = None,
) -> None:
    """Run tonight's job now: refresh, then score every pending study (the nightly deployment's flow)."""
    from flows.nightly import nightly_flow

    _settings(home)
    _echo_json(
        nightly_flow(str(source_dir) if source_dir else None, str(incoming) if incoming else None, data=_config(config).data)
    )


@app.command()
def serve() -> None:  # pragma: no cover - runs until interrupted
    """Serve the deployments in this process (registered as <name>-served; stopping pauses only
    those). Parameters come from $CXR_CONFIG (default configs/seed004.yaml); schedules, pools and
    folders from CXR_* variables (see deployments/definitions.py)."""
    from deployments.definitions import serve_all

    serve_all()


@deployments_app.command("yaml")
def deployments_yaml(
    out: Annotated[
        Path | None, typer.Option(help="Write here (e.g. deployments/prefect.yaml) instead of standard output.")
    ] = None,
) -> None:
    """Print deployments/prefect.yaml for `prefect deploy --all`, with the parameters of $CXR_CONFIG."""
    from deployments.definitions import prefect_yaml

    text = prefect_yaml()
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {out}")


@reports_app.command("serve")
def reports_serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on (default: $CXR_REPORTS_HOST or 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: $CXR_REPORTS_PORT or 8000).")] = None,
    home: HomeOption = None,
) -> None:  # pragma: no cover - runs until interrupted
    """Serve the reports folder read-only over HTTP, so the Prefect UI's report links open.
    Links use $CXR_REPORTS_BASE_URL (default http://<host>:<port>/reports)."""
    from reports.server import serve_reports

    settings = _settings(home)
    serve_reports(settings.reports_dir, host or settings.reports_host, port or settings.reports_port)


if __name__ == "__main__":  # pragma: no cover
    app()
