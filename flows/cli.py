"""``cxr``: the command line. Every pipeline command runs its Prefect flow; ``cxr models`` and
``cxr runs`` read the database alone.

Start-up is cheap: Prefect and torch are imported by the commands that run a flow, after their
inputs are checked (configuration, folders, names), and a running Prefect server is reused
(:func:`flows.cli_support.use_running_prefect_server`). A user's mistake is one line on stderr
and exit status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

import configs
from cxrmodel.config import SynthConfig
from flows.cli_registry import models_app, runs
from flows.cli_support import (
    evaluation_id,
    exit_process,
    folder,
    model_version_id,
    pipeline_config,
    prepare_flow_command,
    require_champion,
    run_cli,
    settings,
    stop_on_sigterm,
    workspace,
)


class CxrApp(typer.Typer):
    """The ``cxr`` script's app: calling it (what the script does) runs it through
    :func:`flows.cli_support.run_cli`, so a user's mistake is one line and exit status 2."""

    def __call__(self, *args, **kwargs):
        try:
            status = run_cli(
                lambda argv: typer.main.get_command(self).main(argv, "cxr", standalone_mode=False), kwargs.get("args")
            )
        except SystemExit as exc:
            status = exc.code
        # typer.Exit(code) in a command returns the code; only the script itself (no args given)
        # may end the process without finalising it
        exit_process(status if isinstance(status, int | str) else None, script=kwargs.get("args") is None)


app = CxrApp(help="Chest X-ray pipeline (research tool, not a medical device).", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
app.command("runs")(runs)
deployments_app = typer.Typer(
    help="The shipped deployments (nightly run, weekly retrain, on-demand scoring and reports).", no_args_is_help=True
)
app.add_typer(deployments_app, name="deployments")
reports_app = typer.Typer(help="The HTML reports.", no_args_is_help=True)
app.add_typer(reports_app, name="reports")
from flows.cli_pacs import pacs_app  # noqa: E402 - issue 23: cxr pacs pull / push

app.add_typer(pacs_app, name="pacs")

#: What --help shows as the configuration that applies now (resolved for real by
#: :func:`deployments.settings.resolve_config` when the command runs).
_CONFIG_NOW = f"$CXR_CONFIG={os.environ['CXR_CONFIG']}" if os.environ.get("CXR_CONFIG") else configs.DEFAULT
ConfigOption = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        help="Pipeline YAML (data, train, thresholds, evaluation), or a shipped name: "
        f"{', '.join(configs.names())}. Unset: $CXR_CONFIG, else {configs.DEFAULT}.",
        show_default=_CONFIG_NOW,
    ),
]
HomeOption = Annotated[Path | None, typer.Option("--home", help="State folder (default: $CXR_HOME or .cxr).")]
VersionArgument = Annotated[str, typer.Argument(help="Model version: id, name, latest or champion (cxr models list).")]


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error (also CXR_DEBUG=1).")] = False,
) -> None:
    """Chest X-ray pipeline (research tool, not a medical device)."""


def _echo_json(result) -> None:
    """Print a flow's result (a dataclass) as indented JSON."""
    typer.echo(json.dumps(dataclasses.asdict(result), indent=2, default=str))


@db_app.command("upgrade")
def db_upgrade(
    home: HomeOption = None,
    revision: Annotated[str, typer.Option(help="Alembic revision to go to.")] = "head",
) -> None:
    """Create or migrate the schema (Alembic) at $CXR_DATABASE_URL."""
    from db.engine import displayed_url, upgrade_database

    url = settings(home).resolved_database_url
    upgrade_database(url, revision)
    typer.echo(f"database at {displayed_url(url)} is at revision {revision}")


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the NIH-layout dataset into.")],
    studies: Annotated[int, typer.Option(min=10, help="Labelled studies to generate.")] = 2000,
    incoming: Annotated[int, typer.Option(min=0, help="Unlabelled studies to generate for scoring.")] = 200,
    image_size: Annotated[int, typer.Option(min=32, help="Side of the written images in pixels.")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed (the same seed writes the same dataset).")] = 0,
) -> None:
    """Generate a synthetic dataset in the real NIH ChestX-ray14 layout."""
    prepare_flow_command()
    from flows.refresh import synthesize_flow

    summary = synthesize_flow(str(out), SynthConfig(n_studies=studies, n_incoming=incoming, image_size=image_size, seed=seed))
    _echo_json(summary)


class Source(StrEnum):
    nih_local = "nih-local"
    synthetic = "synthetic"
    huggingface = "huggingface"


@app.command()
def refresh(
    source_dir: Annotated[Path, typer.Argument(help="NIH-layout folder (Data_Entry_2017*.csv, images/).")],
    incoming: Annotated[Path | None, typer.Option(help="Folder of new PNG/DICOM studies to register.")] = None,
    source: Annotated[Source, typer.Option(help="How to read the folder.")] = Source.nih_local,
    hub_repo: Annotated[str | None, typer.Option(help="Hugging Face dataset repo id (source huggingface).")] = None,
    hub_revision: Annotated[str | None, typer.Option(help="Commit hash or tag to pin (source huggingface).")] = None,
    config: ConfigOption = None,
    home: HomeOption = None,
) -> None:
    """Refresh studies from a dataset folder (and register incoming studies). With the source
    huggingface the folder is first filled from the Hub (HF_HUB_OFFLINE honoured)."""
    from cxrmodel.config import HubConfig

    ws = workspace(home)
    cfg = pipeline_config(config)
    if source != Source.huggingface:
        folder(source_dir, "source folder")
    incoming_dir = folder(incoming, "incoming folder")
    hub = HubConfig(repo_id=hub_repo, revision=hub_revision) if source == Source.huggingface else None
    prepare_flow_command()
    from flows.refresh import refresh_flow

    _echo_json(refresh_flow(str(source_dir), source.value, incoming_dir, cfg.data, hub, **ws.flow_parameters()))


@app.command()
def train(
    config: ConfigOption = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Epochs of seed 004's network (default: the configuration's).")
    ] = None,
    knn_baseline: Annotated[
        bool | None, typer.Option(help="Fit the k-NN embedding baseline (default: the configuration's candidates).")
    ] = None,
    mlp_baseline: Annotated[
        bool | None, typer.Option(help="Fit the MLP embedding baseline (default: the configuration's candidates).")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Train every candidate the configuration names (its candidates section): seed 004's
    network (a progress bar per epoch and batch) with the labelled studies' embedding index, the
    k-NN and MLP heads on it, the CheXNet-style network and the pixel-logistic regression; each
    calibrated on the validation split (the configuration's thresholds), ready for cxr evaluate."""
    from db import lookup
    from db.engine import session_scope
    from flows.cli_support import database_url

    ws = workspace(home)
    cfg = pipeline_config(config)
    with session_scope(database_url(home)) as session:
        lookup.require_labelled_studies(session)
    train_cfg = cfg.train.model_copy(update={"epochs": epochs}) if epochs else cfg.train
    overrides = {k: v for k, v in (("knn", knn_baseline), ("mlp", mlp_baseline)) if v is not None}
    candidates = cfg.candidates.model_copy(update=overrides)
    prepare_flow_command()
    from flows.pipeline import train_candidates_flow

    _echo_json(train_candidates_flow(cfg.data, train_cfg, candidates, cfg.thresholds, **ws.flow_parameters()))


@app.command()
def calibrate(model: VersionArgument, config: ConfigOption = None, home: HomeOption = None) -> None:
    """Fit per-finding thresholds of a model version on the validation split."""
    cfg = pipeline_config(config)
    version_id = model_version_id(home, model)
    prepare_flow_command()
    from flows.stages import calibrate_flow

    typer.echo(f"threshold set {calibrate_flow(version_id, cfg.thresholds, **workspace(home).flow_parameters())}")


@app.command()
def evaluate(
    model: VersionArgument,
    promote: Annotated[
        bool,
        typer.Option(help="Rank the candidates trained with it (and the champion); promote the best if it beats the champion."),
    ] = True,
    config: ConfigOption = None,
    home: HomeOption = None,
) -> None:
    """Evaluate a model version on the test split; with --promote, rank every candidate trained with it
    (on validation, or cross-validation when that split is small; a figure once computed is reused)
    and promote the best if it beats the champion."""
    cfg = pipeline_config(config)
    version_id = model_version_id(home, model)
    prepare_flow_command()
    from flows.stages import evaluate_flow

    _echo_json(evaluate_flow(version_id, promote=promote, evaluation=cfg.evaluation, **workspace(home).flow_parameters()))


class TaskRunnerChoice(StrEnum):
    default = "default"
    dask = "dask"


@app.command()
def score(
    batch_size: Annotated[int, typer.Option(min=1, help="Studies per model batch.")] = 64,
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
    require_champion(home)
    prepare_flow_command()
    from flows.stages import score_flow

    _echo_json(
        score_flow(
            batch_size=batch_size,
            task_runner=task_runner.value,
            dask_address=dask_address,
            dask_workers=dask_workers,
            **({"chunk_size": chunk_size} if chunk_size else {}),
            **workspace(home).flow_parameters(),
        )
    )


@app.command()
def similar(
    study_key: Annotated[str, typer.Argument(help="Study key (image file name) of a labelled or incoming study.")],
    k: Annotated[int, typer.Option("--k", min=1, help="How many similar labelled studies to list.")] = 5,
    home: HomeOption = None,
) -> None:
    """List the labelled studies most similar to one study in the champion's embedding space."""
    require_champion(home)
    prepare_flow_command()
    from flows.stages import similar_flow

    rows = similar_flow(study_key, k, **workspace(home).flow_parameters())
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
def report(
    evaluation: Annotated[str, typer.Argument(help="Evaluation id (cxr runs, cxr models list) or latest.")] = "latest",
    home: HomeOption = None,
) -> None:
    """Render the HTML evaluation report of one evaluation."""
    chosen = evaluation_id(home, evaluation)
    prepare_flow_command()
    from flows.stages import report_flow

    typer.echo(report_flow(chosen, **workspace(home).flow_parameters()))


@app.command()
def demo(
    config: ConfigOption = None,
    studies: Annotated[int | None, typer.Option(min=10, help="Labelled studies (default: the configuration's synth).")] = None,
    incoming: Annotated[int | None, typer.Option(min=0, help="Studies to score (default: the configuration's synth).")] = None,
    home: HomeOption = None,
) -> None:
    """Synthesise data, run the whole pipeline, and show where everything landed."""
    state = settings(home)
    cfg = pipeline_config(config)
    synth_cfg = (cfg.synth or SynthConfig()).model_copy(
        update={k: v for k, v in {"n_studies": studies, "n_incoming": incoming}.items() if v is not None}
    )
    started = time.perf_counter()
    prepare_flow_command()
    from flows.demo import run_demo

    run_demo(state, cfg, synth_cfg)
    typer.echo(f"\ndemo finished in {time.perf_counter() - started:.0f} s")


@app.command()
def nightly(
    source_dir: Annotated[Path | None, typer.Option(help="NIH-layout folder to refresh (default: $CXR_SOURCE_DIR).")] = None,
    incoming: Annotated[Path | None, typer.Option(help="Folder of new studies to register (default: $CXR_INCOMING_DIR).")] = None,
    config: ConfigOption = None,
    home: HomeOption = None,
) -> None:
    """Run tonight's job now: refresh, then score every pending study (the nightly deployment's flow)."""
    ws = workspace(home)
    cfg = pipeline_config(config)
    source, new = folder(source_dir, "source folder"), folder(incoming, "incoming folder")
    prepare_flow_command()
    from flows.nightly import nightly_flow

    _echo_json(nightly_flow(source, new, data=cfg.data, **ws.flow_parameters()))


@app.command()
def serve(config: ConfigOption = None) -> None:  # pragma: no cover - runs until interrupted
    """Serve the deployments in this process (registered as <name>-served; stopping pauses only
    those). Parameters come from the pipeline configuration; schedules, pools and folders from
    CXR_* variables (see deployments/definitions.py)."""
    cfg = pipeline_config(config)
    prepare_flow_command()
    from deployments.definitions import serve_all

    stop_on_sigterm()
    serve_all(config=cfg)


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Interface (default: $CXR_API_HOST or 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: $CXR_API_PORT or 8080).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="uvicorn worker processes (default: $CXR_API_WORKERS or 1).")] = None,
    home: HomeOption = None,
) -> None:  # pragma: no cover - runs until interrupted
    """Serve on-demand scoring over HTTP (FastAPI under uvicorn): POST /v1/score and friends, with
    the champion, thresholds and database of the nightly run. Keys: $CXR_API_KEYS."""
    from api.app import serve

    stop_on_sigterm()
    serve(settings(home), host, port, workers)


@deployments_app.command("yaml")
def deployments_yaml(
    out: Annotated[
        Path | None, typer.Option(help="Write here (e.g. deployments/prefect.yaml) instead of standard output.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Print deployments/prefect.yaml for `prefect deploy --all`, with the configuration's parameters."""
    from deployments.definitions import prefect_yaml

    text = prefect_yaml(config=pipeline_config(config))
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

    state = settings(home)
    serve_reports(state.reports_dir, host or state.reports_host, port or state.reports_port)


if __name__ == "__main__":  # pragma: no cover
    app()
