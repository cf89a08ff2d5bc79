"""Calibrate per-finding thresholds, evaluate on the test split, promote a better challenger."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from cxrmodel.config import ThresholdConfig
from cxrmodel.findings import FINDINGS
from cxrmodel.metadata import labels_matrix
from cxrmodel.metrics import evaluate_multilabel
from cxrmodel.thresholds import calibrate_thresholds as calibrate, save_thresholds_json
from db import repository as repo
from db.engine import session_scope
from db.models import Evaluation, ModelVersion
from tasks.common import labelled_frame, run_logger
from tasks.models import LoadedModel, load_model_version


def _load(database_url: str, version_id: int):
    with session_scope(database_url) as session:
        version = session.get(ModelVersion, version_id)
        if version is None:
            raise ValueError(f"no model version with id {version_id}")
        parent = session.get(ModelVersion, version.parent_id) if version.parent_id else None
        return load_model_version(version, parent), version.name, Path(version.artifact_path).parent


def predict_split(database_url: str, home: Path, loaded: LoadedModel, split: str):
    """(probabilities, labels, frame, ms per image) of a loaded model version on a labelled split."""
    frame = labelled_frame(database_url)
    frame = frame[frame["split"] == split].reset_index(drop=True)
    if frame.empty:
        raise RuntimeError(f"no labelled studies in split {split!r}")
    started = time.perf_counter()
    probs = loaded.predict_frame(frame, Path(home) / "cache")
    ms = (time.perf_counter() - started) * 1000 / len(frame)
    return probs, labels_matrix(frame), frame, ms


@task(name="calibrate-thresholds")
def calibrate_thresholds(database_url: str, home: Path, version_id: int, config: ThresholdConfig) -> int:
    """Fit per-finding thresholds on the validation split; store them as the active set and as
    ``thresholds.json`` beside the model."""
    loaded, name, folder = _load(database_url, version_id)
    probs, labels, _, _ = predict_split(database_url, home, loaded, "val")
    result = calibrate(labels, probs, config)
    for finding, note in result.notes.items():
        run_logger().warning("%s: %s", finding, note)
    save_thresholds_json(result, folder / "thresholds.json")
    with session_scope(database_url) as session:
        tset = repo.save_threshold_set(
            session, version_id, result.method, config.model_dump(mode="json"), result.as_dict(), result.notes
        )
        set_id = tset.id
    create_table_artifact(
        key="cxr-thresholds",
        table=[{"finding": f, "threshold": round(float(t), 4), "note": result.notes.get(f, "")} for f, t in zip(FINDINGS, result.thresholds)],
        description=f"Thresholds of {name} ({result.method}), set {set_id}",
    )
    return set_id


@task(name="evaluate-model")
def evaluate_model(database_url: str, home: Path, version_id: int, threshold_set_id: int | None = None, split: str = "test") -> int:
    """Metrics of a model version on ``split`` with its active (or the given) threshold set."""
    with session_scope(database_url) as session:
        tset = session.get(repo.ThresholdSet, threshold_set_id) if threshold_set_id else repo.active_threshold_set(session, version_id)
        if tset is None:
            raise RuntimeError(f"model version {version_id} has no threshold set: run calibration first")
        values = {t.finding: t.threshold for t in tset.thresholds}
        threshold_set_id = tset.id
    thresholds = np.array([values[f] for f in FINDINGS])
    loaded, name, folder = _load(database_url, version_id)
    probs, labels, frame, ms = predict_split(database_url, home, loaded, split)
    result = evaluate_multilabel(labels, probs, thresholds)
    predictions_path = folder / f"predictions_{split}.npz"
    np.savez_compressed(predictions_path, y_true=labels, y_prob=probs.astype(np.float32), study_key=frame["study_key"].to_numpy(dtype=str))
    with session_scope(database_url) as session:
        evaluation = repo.save_evaluation(
            session, version_id, threshold_set_id, split, result.aggregates, result.per_class, inference_ms_per_image=ms
        )
        evaluation_id = evaluation.id
    agg = result.aggregates
    create_table_artifact(
        key="cxr-per-class-metrics",
        table=[{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in result.per_class],
        description=f"Per-class metrics of {name} on {split} (evaluation {evaluation_id})",
    )
    create_markdown_artifact(
        key="cxr-evaluation-summary",
        markdown=(
            f"## {name} on {split}\n\n| metric | value |\n|---|---|\n"
            + "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in agg.items())
        ),
        description=f"Evaluation {evaluation_id}",
    )
    run_logger().info("%s on %s: macro AUROC %.3f, macro-F1 %.3f", name, split, agg["macro_auroc"] or float("nan"), agg["macro_f1"])
    return evaluation_id


@task(name="promote-if-better")
def promote_if_better(database_url: str, version_id: int, metric: str = "macro_auroc", margin: float = 0.0, split: str = "test") -> bool:
    """Promote ``version_id`` when there is no champion, or when it beats the champion's
    ``metric`` on the same split by more than ``margin``."""
    with session_scope(database_url) as session:
        ours = session.query(Evaluation).filter_by(model_version_id=version_id, split=split).order_by(Evaluation.id.desc()).first()
        if ours is None:
            raise RuntimeError(f"model version {version_id} has no evaluation on {split}")
        current = repo.champion(session)
        if current is None:
            repo.promote(session, version_id, f"first champion ({metric} {getattr(ours, metric):.4f})")
            return True
        if current.id == version_id:
            return True
        theirs = session.query(Evaluation).filter_by(model_version_id=current.id, split=split).order_by(Evaluation.id.desc()).first()
        ours_value = getattr(ours, metric) or 0.0
        theirs_value = (getattr(theirs, metric) or 0.0) if theirs else 0.0
        if ours_value > theirs_value + margin:
            repo.promote(session, version_id, f"{metric} {ours_value:.4f} beats champion {current.name} ({theirs_value:.4f}) by more than {margin}")
            return True
        run_logger().info("kept champion %s: %s %.4f vs challenger %.4f", current.name, metric, theirs_value, ours_value)
        return False
