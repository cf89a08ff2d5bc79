"""One evaluation of a model's probabilities on a split: everything a stored evaluation holds.

:func:`evaluate` takes labels, probabilities, the thresholds and the studies (patients, sex,
age, view) and returns a :class:`ModelEvaluation`: seed 004's metrics, calibration error,
patient-level bootstrap intervals, optionally a probability calibration fitted on validation
(Brier and ECE after it), subgroup metrics and the arrays the report draws (a 2-D embedding
map when embeddings are given). Pure: no files, no database; :func:`save_arrays` writes the
arrays of one stored evaluation.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrmodel.config import EvaluationConfig
from cxrmodel.data.metadata import labels_matrix
from cxrmodel.evaluation.bootstrap import bootstrap_ci
from cxrmodel.evaluation.calibration import ProbabilityCalibrator, calibration_summary, expected_calibration_error
from cxrmodel.evaluation.metrics import evaluate_multilabel
from cxrmodel.evaluation.subgroups import age_band, subgroup_metrics
from cxrmodel.explain.embedding_map import embedding_map
from cxrmodel.io import atomic_write
from cxrmodel.models.loading import LoadedModel

ARRAYS_FILE = "predictions.npz"


@dataclass
class ModelEvaluation:
    """Aggregates (the ``evaluations`` columns), one row per finding (``class_metrics``), one
    per subgroup (``subgroup_metrics``, key ``group``), the arrays of the report (``y_true``,
    ``y_prob``, ``study_key``; ``y_prob_calibrated``, ``map_xy``, ``map_rows`` when computed)
    and the notes of the probability calibration per finding."""

    aggregates: dict[str, object]
    per_class: list[dict]
    subgroups: list[dict]
    arrays: dict[str, np.ndarray]
    calibration_notes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SplitPredictions:
    """A model's probabilities on the labelled studies of one split, their labels and the time per image."""

    frame: pd.DataFrame
    labels: np.ndarray
    probabilities: np.ndarray
    ms_per_image: float


def predict_split(model: LoadedModel, frame: pd.DataFrame, split: str, cache_root: Path) -> SplitPredictions:
    """Probabilities of ``model`` on the rows of ``frame`` in ``split``, read through the image cache."""
    rows = frame[frame["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise RuntimeError(f"no labelled studies in split {split!r}")
    started = time.perf_counter()
    probabilities = model.predict_frame(rows, cache_root)
    ms = (time.perf_counter() - started) * 1000 / len(rows)
    return SplitPredictions(rows, labels_matrix(rows), probabilities, ms)


def predict_split_reusing(model: LoadedModel, frame: pd.DataFrame, split: str, cache_root: Path, store: Path) -> SplitPredictions:
    """:func:`predict_split`, reusing the probabilities kept in ``store`` (an ``.npz`` written
    by an earlier call for the same model version) when they cover exactly the same studies,
    with the same image content, in the same order; otherwise predict and keep them there. Calibration, selection and the
    evaluation's probability calibration all read the validation split of the same version."""
    rows = frame[frame["split"] == split].reset_index(drop=True)
    hashes = rows["content_hash"] if "content_hash" in rows else pd.Series([""] * len(rows))
    keys = (rows["study_key"].astype(str) + ":" + hashes.fillna("").astype(str)).to_numpy(dtype=str)
    if Path(store).is_file() and not rows.empty:
        with np.load(store, allow_pickle=False) as kept:
            if kept["study_key"].shape == keys.shape and (kept["study_key"] == keys).all():
                return SplitPredictions(rows, labels_matrix(rows), kept["probabilities"], float(kept["ms_per_image"]))
    result = predict_split(model, frame, split, cache_root)
    save_arrays(store, {"study_key": keys, "probabilities": result.probabilities, "ms_per_image": np.array(result.ms_per_image)})
    return result


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _add_calibration_error(result: ModelEvaluation, labels: np.ndarray, probs: np.ndarray, n_bins: int) -> None:
    for j, row in enumerate(result.per_class):
        row["ece"] = expected_calibration_error(labels[:, j], probs[:, j], n_bins=n_bins)
    result.aggregates["mean_ece"] = float(np.mean([row["ece"] for row in result.per_class]))


def _add_intervals(result: ModelEvaluation, labels, probs, thresholds, patients, config: EvaluationConfig) -> None:
    """``config.confidence`` bootstrap intervals over patients for AUROC and F1."""
    boot = bootstrap_ci(labels, probs, thresholds, patients, config.n_bootstrap, config.confidence, config.random_state)
    for j, row in enumerate(result.per_class):
        row["auroc_ci_low"], row["auroc_ci_high"] = (_finite_or_none(v) for v in boot.auroc_ci[j])
        row["f1_ci_low"], row["f1_ci_high"] = (_finite_or_none(v) for v in boot.f1_ci[j])
    agg = result.aggregates
    agg["macro_auroc_ci_low"], agg["macro_auroc_ci_high"] = (_finite_or_none(v) for v in boot.macro_auroc_ci)
    agg["macro_f1_ci_low"], agg["macro_f1_ci_high"] = (_finite_or_none(v) for v in boot.macro_f1_ci)
    agg["n_bootstrap"] = boot.n_resamples


def _add_probability_calibration(result: ModelEvaluation, labels, probs, val_labels, val_probs, config: EvaluationConfig) -> None:
    """Per-class calibration fitted on validation (a finding whose validation ECE it would worsen
    keeps its raw probabilities, listed in ``aggregates["calibration"]["not_applied"]``); Brier and
    ECE after it on ``probs``."""
    calibrator = ProbabilityCalibrator.fit(val_labels, val_probs, config.calibration, n_bins=config.ece_bins)
    calibrated = calibrator.transform(probs)
    for row, after in zip(result.per_class, calibration_summary(labels, probs, calibrated, n_bins=config.ece_bins), strict=True):
        row["brier_calibrated"], row["ece_calibrated"] = after["brier_after"], after["ece_after"]
    result.aggregates["calibration_method"] = config.calibration
    result.aggregates["calibration"] = calibrator.to_dict()
    result.arrays["y_prob_calibrated"] = calibrated.astype(np.float32)
    result.calibration_notes = dict(calibrator.notes)


def evaluate(
    labels: np.ndarray,
    probabilities: np.ndarray,
    thresholds: np.ndarray,
    studies: pd.DataFrame,
    config: EvaluationConfig = EvaluationConfig(),
    *,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    embeddings: np.ndarray | None = None,
    inference_ms_per_image: float | None = None,
) -> ModelEvaluation:
    """Evaluate ``probabilities`` ``[N, 14]`` against ``labels`` at ``thresholds`` ``[14]``.

    ``studies`` has one row per study, in the same order, with ``study_key``, ``patient_id``
    (the bootstrap's resampling unit; the study key where missing), ``sex``, ``age`` and
    ``view`` (the subgroups). ``validation`` is ``(labels, probabilities)`` on the validation
    split, needed when ``config.calibration`` is not ``'none'``; ``embeddings`` ``[N, d]`` (at
    least 4 rows) add the 2-D map when ``config.embedding_map`` is on."""
    point = evaluate_multilabel(labels, probabilities, thresholds)
    result = ModelEvaluation(
        aggregates={**point.aggregates, "inference_ms_per_image": inference_ms_per_image},
        per_class=[dict(row) for row in point.per_class],
        subgroups=[],
        arrays={
            "y_true": labels,
            "y_prob": probabilities.astype(np.float32),
            "study_key": studies["study_key"].to_numpy(dtype=str),
        },
    )
    _add_calibration_error(result, labels, probabilities, config.ece_bins)
    if config.n_bootstrap:
        patients = studies["patient_id"].fillna(studies["study_key"]).astype(str).to_numpy()
        _add_intervals(result, labels, probabilities, thresholds, patients, config)
    if config.calibration != "none":
        if validation is None:
            raise ValueError(f"calibration {config.calibration!r} needs the validation labels and probabilities")
        _add_probability_calibration(result, labels, probabilities, *validation, config)
    attributes = {
        "sex": studies["sex"].to_numpy(dtype=object),
        "age_band": age_band(studies["age"].to_numpy(dtype=float)),
        "view": studies["view"].to_numpy(dtype=object),
    }
    result.subgroups = subgroup_metrics(labels, probabilities, thresholds, attributes, min_studies=config.subgroup_min_studies)
    if config.embedding_map and embeddings is not None and len(embeddings) >= 4:
        result.arrays["map_xy"], result.arrays["map_rows"] = embedding_map(embeddings, config.map_max_points, config.random_state)
    return result


def arrays_path(model_folder: str | os.PathLike[str], evaluation_id: int) -> Path:
    """Where the arrays of evaluation ``evaluation_id`` live: its own folder beside the model."""
    return Path(model_folder) / "evaluations" / str(evaluation_id) / ARRAYS_FILE


def save_arrays(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` (compressed ``.npz``) atomically to ``path``."""
    return atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))
