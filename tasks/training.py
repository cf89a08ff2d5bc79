"""Training tasks: seed 004's network, the k-NN and MLP embedding baselines and the classical
pixel-logistic baseline.

The work is :mod:`cxrmodel.training` (prepare the data, train the network, save what the run
leaves, fit a baseline); the rows are :mod:`db.training` and :mod:`db.registry`. The helpers
below the tasks are shared with the data-parallel entry point :mod:`flows.train_ddp`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
from prefect import task
from prefect.artifacts import create_table_artifact

from cxrmodel.config import ClassicalConfig, DataConfig, TrainConfig
from cxrmodel.device import resolve_device
from cxrmodel.layout import HomeLayout
from cxrmodel.models.loading import load_model_version
from cxrmodel.training.baselines import FittedBaseline, embed_training_split, fit_knn_baseline, fit_mlp_baseline
from cxrmodel.training.classical import fit_classical_baseline
from cxrmodel.training.data import TrainingData, prepare_training_data, version_name
from cxrmodel.training.loop import EpochResult, FitResult, seed_everything
from cxrmodel.training.network import resumed_history
from cxrmodel.training.network import train_network as fit_network
from cxrmodel.training.saving import save_trained_model
from db import registry, training
from db.engine import session_scope
from db.statuses import ModelStatus
from tasks.common import flow_run_id, labelled_frame, model_dir, run_logger
from tasks.progress import StageProgress, training_progress

#: A running training run without an epoch for this long lost its process.
TRAINING_STALE_MINUTES = 12 * 60.0


def open_training_run(
    database_url: str,
    train: TrainConfig,
    device: str,
    prepared: TrainingData,
    flow_run: str | None,
    output_dir: Path | None = None,
    history_rows: list[dict] | None = None,
) -> int:
    """Mark failed the training runs left ``running`` by a lost process (:mod:`db.runs`; their
    orphan folders are named in their error), then insert this run's row (status 'running',
    its folder). A run resumed from ``train.resume_checkpoint`` says so (``resumed_from``) and
    records the checkpoint's epochs first, appending them to ``history_rows``, so its epoch
    table is whole. Returns the run id."""
    resumed_from, earlier = None, []
    if train.resume_checkpoint is not None and Path(train.resume_checkpoint).is_file():
        last_epoch, earlier = resumed_history(train.resume_checkpoint)
        resumed_from = f"{train.resume_checkpoint} (epoch {last_epoch})"
    with session_scope(database_url) as session:
        stale = training.fail_stale_training_runs(session, timedelta(minutes=TRAINING_STALE_MINUTES))
        run_id = training.start_training_run(
            session,
            flow_run_id=flow_run,
            architecture=train.architecture,
            config=train.model_dump(mode="json"),
            device=device,
            n_train=len(prepared.train_rows),
            n_val=len(prepared.val_rows),
            output_dir=None if output_dir is None else str(output_dir),
            resumed_from=resumed_from,
        ).id
        for row in earlier:
            training.record_epoch(session, run_id, row)
    if history_rows is not None:
        history_rows.extend(earlier)
    for stale_id, folder in stale:
        run_logger().warning(
            "training run %d had no epoch for %g minutes: marked failed (folder %s)", stale_id, TRAINING_STALE_MINUTES, folder
        )
    return run_id


def epoch_recorder(
    database_url: str,
    run_id: int,
    name: str,
    train: TrainConfig,
    logger,
    log_handler: logging.FileHandler,
    history_rows: list[dict],
    table_artifact: bool = True,
) -> Callable[[EpochResult], None]:
    """``fit``'s ``on_epoch``: one ``epoch_metrics`` row, a log line (run log and ``train.log``)
    and, with ``table_artifact``, the live Prefect table of every epoch so far."""

    def on_epoch(result: EpochResult) -> None:
        row = result.as_dict()
        history_rows.append(row)
        with session_scope(database_url) as session:
            training.record_epoch(session, run_id, row)
        message = (
            f"epoch {result.epoch}/{train.epochs}: train loss {result.train_loss:.4f}, val loss {result.val_loss:.4f}, "
            f"macro-F1 {result.macro_f1:.3f}, mean AUROC {result.mean_auroc or float('nan'):.3f}, "
            f"lr {result.learning_rate:.2e}, {result.seconds:.1f}s ({result.images_per_second:.1f} img/s)"
        )
        logger.info(message)
        log_handler.stream.write(message + "\n")
        log_handler.flush()
        if table_artifact:
            create_table_artifact(
                key="cxr-training-epochs",
                table=[{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in history_rows],
                description=f"Per-epoch metrics of training run {run_id} ({name}); updated live as each epoch ends.",
            )

    return on_epoch


def fail_training_run(database_url: str, run_id: int, error: BaseException | None = None) -> None:
    reason = None if error is None else f"{type(error).__name__}: {error}".splitlines()[0]
    with session_scope(database_url) as session:
        training.fail_training_run(session, run_id, reason)


def register_trained_model(
    database_url: str,
    out: Path,
    name: str,
    run_id: int,
    model: torch.nn.Module,
    result: FitResult,
    prepared: TrainingData,
    data: DataConfig,
    train: TrainConfig,
    history_rows: list[dict],
    extra_config: dict | None = None,
) -> int:
    """Write the run's artefacts into ``out`` (:func:`cxrmodel.training.saving.save_trained_model`),
    register the candidate model version and close the training run. Returns the version id."""
    saved = save_trained_model(out, name, model, result, prepared, data, train, history_rows, extra_config)
    with session_scope(database_url) as session:
        version = registry.register_model_version(
            session,
            name=name,
            kind=train.architecture,
            config=saved.config,
            artifact_path=str(saved.artifact_path),
            sha256=saved.sha256,
            status=ModelStatus.CANDIDATE,
            parameter_count=saved.parameter_count,
        )
        training.complete_training_run(session, run_id, version.id, result.best_epoch, result.best_metric)
        return version.id


@task(name="train-network")
def train_network(database_url: str, home: Path, data: DataConfig, train: TrainConfig) -> int:
    """Train seed 004's model (or the image-only baseline) on the training split; register the
    best checkpoint as a candidate model version and return its id."""
    logger = run_logger()
    seed_everything(train.seed)
    prepared = prepare_training_data(labelled_frame(database_url), HomeLayout(Path(home)).cache, data, train)
    logger.info(
        "training rows %d -> %d after balancing %r", prepared.n_train_before_balancing, len(prepared.train_rows), data.balancing
    )
    device = resolve_device(train.device)
    name = version_name(train.architecture)
    out = model_dir(home, name)
    if train.resume_checkpoint is not None:
        logger.info("resuming from %s", train.resume_checkpoint)
    log_handler = logging.FileHandler(out / "train.log")
    history_rows: list[dict] = []
    run_id = open_training_run(database_url, train, str(device), prepared, flow_run_id(), out, history_rows)
    try:
        with StageProgress("cxr-progress-training", f"training {name}") as stage:
            model, result = fit_network(
                prepared,
                out,
                train,
                epoch_recorder(database_url, run_id, name, train, logger, log_handler, history_rows),
                device,
                on_batch=training_progress(stage, train.epochs),
            )
    except BaseException as exc:
        fail_training_run(database_url, run_id, exc)
        raise
    finally:
        log_handler.close()
    version_id = register_trained_model(database_url, out, name, run_id, model, result, prepared, data, train, history_rows)
    logger.info(
        "registered %s (id %d), best epoch %d, %s %.3f",
        name,
        version_id,
        result.best_epoch,
        train.checkpoint_selection,
        result.best_metric,
    )
    return version_id


def _register_baseline(database_url: str, baseline: FittedBaseline, parent_version_id: int | None = None) -> int:
    with session_scope(database_url) as session:
        return registry.register_model_version(
            session,
            name=baseline.name,
            kind=baseline.kind,
            config=baseline.config,
            artifact_path=str(baseline.artifact_path),
            sha256=baseline.sha256,
            status=ModelStatus.CANDIDATE,
            parent_id=parent_version_id,
            parameter_count=baseline.parameter_count,
        ).id


def _fit_baseline(
    database_url: str, home: Path, parent_version_id: int, fit: Callable[..., FittedBaseline]
) -> tuple[int, FittedBaseline]:
    """Embed the training split with the parent network, fit the baseline, register it."""
    with session_scope(database_url) as session:
        parent_files = registry.model_version_files(session, parent_version_id)
    parent = load_model_version(parent_files)
    embeddings, labels = embed_training_split(parent, labelled_frame(database_url), HomeLayout(Path(home)).cache)
    baseline = fit(parent, parent_files.name, embeddings, labels, HomeLayout(Path(home)).models)
    return _register_baseline(database_url, baseline, parent_version_id), baseline


@task(name="train-knn-baseline")
def train_knn_baseline(database_url: str, home: Path, parent_version_id: int) -> int:
    """Seed 000's baseline: k-NN (GridSearchCV over k) on the trained network's embeddings."""
    version_id, knn = _fit_baseline(database_url, home, parent_version_id, fit_knn_baseline)
    run_logger().info(
        "k-NN baseline: k=%d (5-fold mean AUROC %.3f)", knn.config["n_neighbors"], knn.config["cv_mean_auroc"] or float("nan")
    )
    return version_id


@task(name="train-mlp-baseline")
def train_mlp_baseline(database_url: str, home: Path, parent_version_id: int) -> int:
    """Seed 000's other baseline: a small MLP (d -> 128 -> 14) on the trained network's
    embeddings, early-stopped on a held-out tenth of the training split."""
    version_id, mlp = _fit_baseline(database_url, home, parent_version_id, fit_mlp_baseline)
    config = mlp.config
    run_logger().info(
        "MLP baseline: best epoch %d of %d (held-out BCE %.4f)",
        config["best_epoch"],
        config["epochs_run"],
        config["held_out_bce"] or float("nan"),
    )
    return version_id


@task(name="train-classical-baseline")
def train_classical_baseline(database_url: str, home: Path, data: DataConfig, config: ClassicalConfig) -> int:
    """The classical baseline: one logistic regression per finding on the training split's
    cached images shrunk to ``config.side`` pixels plus age, sex and view; registered as a
    candidate like every other model version. Returns its id."""
    frame = labelled_frame(database_url)
    baseline = fit_classical_baseline(frame, HomeLayout(Path(home)).cache, data, config, HomeLayout(Path(home)).models)
    version_id = _register_baseline(database_url, baseline)
    run_logger().info(
        "classical baseline %s: %d training studies, %dx%d pixels, C=%g (%d findings without a model)",
        baseline.name,
        baseline.config["n_train"],
        config.side,
        config.side,
        config.c,
        baseline.config["findings_without_model"],
    )
    return version_id
