"""Training tasks: seed 004's network and the k-NN and MLP embedding baselines."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from prefect import task
from prefect.artifacts import create_table_artifact
from torch.utils.data import DataLoader

from cxrmodel.models.artifacts import save_state_dict
from cxrmodel.data.balancing import BalancingResult, apply_balancing, preset_steps
from cxrmodel.models.embedding import KnnEmbeddingModel, MlpEmbeddingModel
from cxrmodel.data.cache import ImageCache
from cxrmodel.config import DataConfig, TrainConfig
from cxrmodel.data.datasets import StudyDataset
from cxrmodel.findings import FINDINGS
from cxrmodel.data.metadata import AgeScaler, labels_matrix, patient_features
from cxrmodel.models.networks import build_model, count_parameters
from cxrmodel.training.loop import EpochResult, FitResult, fit, positive_weights, resolve_device, seed_everything
from cxrmodel.data.transforms import eval_transform, train_transform
from db import repository as repo
from db.engine import session_scope
from db.models import ModelVersion, TrainingRun
from tasks.common import cached_loader, flow_run_id, labelled_frame, model_dir, run_logger
from tasks.models import LoadedModel, load_model_version


def _version_name(kind: str) -> str:
    return f"{kind}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')}"


@dataclass
class TrainingData:
    """What one training run learns from, built the same way by :func:`train_network` and by
    every rank of the data-parallel entry point :mod:`flows.train_ddp`."""

    train_rows: pd.DataFrame  # the training split after balancing
    val_rows: pd.DataFrame
    n_train_before_balancing: int
    balanced: BalancingResult
    scaler: AgeScaler
    train_dataset: StudyDataset
    val_dataset: StudyDataset
    pos_weight: torch.Tensor


def prepare_training_data(frame: pd.DataFrame, home: Path, data: DataConfig, train: TrainConfig) -> TrainingData:
    """Training and validation datasets from :func:`tasks.common.labelled_frame`'s frame:
    balancing (training split only), the age scaler, cached image loaders, positive weights."""
    train_df = frame[frame["split"] == "train"].reset_index(drop=True)
    val_df = frame[frame["split"] == "val"].reset_index(drop=True)
    if train_df.empty or val_df.empty:
        raise RuntimeError(f"need train and val studies, have {len(train_df)} and {len(val_df)}")
    steps = preset_steps(data.balancing) if data.balancing != "none" else []
    balanced = apply_balancing(train_df, steps, seed=data.balancing_seed)
    train_rows = balanced.frame

    scaler = AgeScaler.fit(train_df["age"])
    cache = ImageCache(Path(home) / "cache", data.image_size)
    train_dataset = StudyDataset(
        cached_loader(cache, train_rows), patient_features(train_rows, scaler), labels_matrix(train_rows),
        flips=train_rows["flip"].to_numpy(), transform=train_transform(data.image_size) if train.augment else eval_transform(data.image_size),
    )
    val_dataset = StudyDataset(cached_loader(cache, val_df), patient_features(val_df, scaler), labels_matrix(val_df), transform=eval_transform(data.image_size))
    pos_weight = positive_weights(labels_matrix(train_rows), train.pos_weight_overrides, train.pos_weight_max)
    return TrainingData(train_rows, val_df, len(train_df), balanced, scaler, train_dataset, val_dataset, pos_weight)


def open_training_run(database_url: str, train: TrainConfig, device: str, prepared: TrainingData, flow_run: str | None) -> int:
    """Insert the ``training_runs`` row (status 'running'); return its id."""
    with session_scope(database_url) as session:
        run = repo.start_training_run(
            session, flow_run_id=flow_run, architecture=train.architecture, config=train.model_dump(mode="json"),
            device=device, n_train=len(prepared.train_rows), n_val=len(prepared.val_rows),
        )
        return run.id


def epoch_recorder(
    database_url: str, run_id: int, name: str, train: TrainConfig, logger, log_handler: logging.FileHandler,
    history_rows: list[dict], table_artifact: bool = True,
) -> Callable[[EpochResult], None]:
    """``fit``'s ``on_epoch``: one ``epoch_metrics`` row, a log line (run log and ``train.log``)
    and, with ``table_artifact``, the live Prefect table of every epoch so far."""

    def on_epoch(result: EpochResult) -> None:
        row = result.as_dict()
        history_rows.append(row)
        with session_scope(database_url) as session:
            repo.record_epoch(session, run_id, row)
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


def fail_training_run(database_url: str, run_id: int) -> None:
    with session_scope(database_url) as session:
        failed = session.get(TrainingRun, run_id)
        failed.status, failed.finished_at = "failed", repo.now()


def register_trained_model(
    database_url: str, out: Path, name: str, run_id: int, model: torch.nn.Module, result: FitResult,
    prepared: TrainingData, data: DataConfig, train: TrainConfig, history_rows: list[dict], extra_config: dict | None = None,
) -> int:
    """Load the best state into ``model`` (the plain module), write the artefacts into ``out``
    (model.safetensors, optimizer.pt from ``out/checkpoint.pt``, config.json,
    validation_metrics.csv), register the candidate model version and close the training
    run. ``extra_config`` is merged into the version's config. Returns the version id."""
    model.load_state_dict(result.best_state)
    config = {
        "architecture": train.architecture,
        "image_size": data.image_size,
        "age_scaler": prepared.scaler.to_dict(),
        "findings": list(FINDINGS),
        "train": train.model_dump(mode="json"),
        "data": data.model_dump(mode="json"),
        "pos_weight": [float(w) for w in prepared.pos_weight],
        "label_counts_before_balancing": prepared.balanced.counts_before,
        "label_counts_after_balancing": prepared.balanced.counts_after,
        "best_epoch": result.best_epoch,
        **(extra_config or {}),
    }
    sha = save_state_dict(model.state_dict(), out / "model.safetensors", metadata={"name": name, "architecture": train.architecture})
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    torch.save(ckpt["optimizer"], out / "optimizer.pt")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    with open(out / "validation_metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history_rows[0]))
        writer.writeheader()
        writer.writerows(history_rows)
    with session_scope(database_url) as session:
        version = repo.register_model_version(
            session, name=name, kind=train.architecture, config=config, artifact_path=str(out / "model.safetensors"),
            sha256=sha, status="candidate", parameter_count=count_parameters(model),
        )
        run = session.get(TrainingRun, run_id)
        run.model_version_id, run.status, run.finished_at = version.id, "completed", repo.now()
        run.best_epoch, run.best_metric = result.best_epoch, float(result.best_metric)
        return version.id


@task(name="train-network")
def train_network(database_url: str, home: Path, data: DataConfig, train: TrainConfig) -> int:
    """Train seed 004's model (or the image-only baseline) on the training split; register the
    best checkpoint as a candidate model version and return its id."""
    logger = run_logger()
    seed_everything(train.seed)
    prepared = prepare_training_data(labelled_frame(database_url), home, data, train)
    train_rows = prepared.train_rows
    logger.info("training rows %d -> %d after balancing %r", prepared.n_train_before_balancing, len(train_rows), data.balancing)

    device = resolve_device(train.device)
    loader_options = {
        "num_workers": train.num_workers,
        "pin_memory": device.type == "cuda",  # page-locked batches, copied with non_blocking=True
        **({"prefetch_factor": train.prefetch_factor or 4, "persistent_workers": True} if train.num_workers else {}),
    }
    train_loader = DataLoader(
        prepared.train_dataset, batch_size=train.batch_size, shuffle=True, drop_last=len(train_rows) > train.batch_size,
        generator=torch.Generator().manual_seed(train.seed), **loader_options,
    )
    val_loader = DataLoader(prepared.val_dataset, batch_size=max(train.batch_size, 64), shuffle=False, **loader_options)
    model = build_model(train.architecture, dropout=train.dropout, **train.backbone_kwargs())

    name = _version_name(train.architecture)
    out = model_dir(home, name)
    log_handler = logging.FileHandler(out / "train.log")
    run_id = open_training_run(database_url, train, str(device), prepared, flow_run_id())
    history_rows: list[dict] = []
    on_epoch = epoch_recorder(database_url, run_id, name, train, logger, log_handler, history_rows)
    checkpoint = out / "checkpoint.pt"
    if train.resume_checkpoint is not None:
        if not Path(train.resume_checkpoint).is_file():
            raise FileNotFoundError(f"resume checkpoint not found: {train.resume_checkpoint}")
        shutil.copyfile(train.resume_checkpoint, checkpoint)
        logger.info("resuming from %s", train.resume_checkpoint)
    try:
        result = fit(
            model, train_loader, val_loader, train, prepared.pos_weight, device, on_epoch=on_epoch,
            checkpoint_path=checkpoint, resume=train.resume_checkpoint is not None,
        )
    except BaseException:
        fail_training_run(database_url, run_id)
        raise
    finally:
        log_handler.close()

    version_id = register_trained_model(database_url, out, name, run_id, model, result, prepared, data, train, history_rows)
    logger.info("registered %s (id %d), best epoch %d, %s %.3f", name, version_id, result.best_epoch, train.selection_metric, result.best_metric)
    return version_id


def _embed_training_split(database_url: str, home: Path, parent_version_id: int) -> tuple[LoadedModel, str, np.ndarray, np.ndarray]:
    """(parent network, parent name, embeddings ``[N, d]``, labels ``[N, 14]``) of the training
    split, embedded by the parent network through the image cache: what every embedding
    baseline is fitted on."""
    with session_scope(database_url) as session:
        parent = session.get(ModelVersion, parent_version_id)
        if parent is None:
            raise ValueError(f"no model version with id {parent_version_id}")
        loaded = load_model_version(parent)
        parent_name = parent.name
    frame = labelled_frame(database_url)
    train_df = frame[frame["split"] == "train"].reset_index(drop=True)
    if train_df.empty:
        raise RuntimeError("no labelled studies in the training split")
    embeddings = loaded.embed_frame(train_df, Path(home) / "cache")
    return loaded, parent_name, embeddings, labels_matrix(train_df)


def _register_baseline(database_url: str, *, name: str, kind: str, config: dict, path: Path, sha: str, parent_version_id: int, parameter_count: int) -> int:
    with session_scope(database_url) as session:
        version = repo.register_model_version(
            session, name=name, kind=kind, config=config, artifact_path=str(path), sha256=sha, status="candidate",
            parent_id=parent_version_id, parameter_count=parameter_count,
        )
        return version.id



@task(name="train-knn-baseline")
def train_knn_baseline(database_url: str, home: Path, parent_version_id: int) -> int:
    """Seed 000's baseline: k-NN (GridSearchCV over k) on the trained network's embeddings."""
    loaded, parent_name, embeddings, labels = _embed_training_split(database_url, home, parent_version_id)
    knn = KnnEmbeddingModel.fit(embeddings, labels)
    name = f"knn_embedding-of-{parent_name}"
    path = model_dir(home, name) / "knn.npz"
    sha = knn.save(path)
    version_id = _register_baseline(
        database_url, name=name, kind="knn_embedding",
        config={"n_neighbors": knn.n_neighbors, "cv_mean_auroc": knn.cv_score, "image_size": loaded.image_size,
                "age_scaler": loaded.age_scaler.to_dict(), "embedding_dim": int(embeddings.shape[1])},
        path=path, sha=sha, parent_version_id=parent_version_id, parameter_count=int(embeddings.size),
    )
    run_logger().info("k-NN baseline: k=%d (5-fold mean AUROC %.3f)", knn.n_neighbors, knn.cv_score or float("nan"))
    return version_id


@task(name="train-mlp-baseline")
def train_mlp_baseline(database_url: str, home: Path, parent_version_id: int) -> int:
    """Seed 000's other baseline: a small MLP (d -> 128 -> 14) on the trained network's
    embeddings, early-stopped on a held-out tenth of the training split."""
    loaded, parent_name, embeddings, labels = _embed_training_split(database_url, home, parent_version_id)
    mlp = MlpEmbeddingModel.fit(embeddings, labels, seed=0)
    name = f"mlp_embedding-of-{parent_name}"
    path = model_dir(home, name) / "mlp.safetensors"
    sha = mlp.save(path)
    version_id = _register_baseline(
        database_url, name=name, kind="mlp_embedding",
        config={"hidden_dim": int(mlp.network[0].out_features), "dropout": float(mlp.network[2].p),
                "best_epoch": mlp.best_epoch, "epochs_run": mlp.epochs_run, "max_epochs": mlp.max_epochs,
                "held_out_bce": mlp.val_loss, "image_size": loaded.image_size,
                "age_scaler": loaded.age_scaler.to_dict(), "embedding_dim": int(embeddings.shape[1])},
        path=path, sha=sha, parent_version_id=parent_version_id,
        parameter_count=sum(p.numel() for p in mlp.network.parameters()),
    )
    run_logger().info("MLP baseline: best epoch %d of %d (held-out BCE %.4f)", mlp.best_epoch, mlp.epochs_run, mlp.val_loss or float("nan"))
    return version_id
