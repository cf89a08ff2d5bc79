"""Calibrate per-finding thresholds, evaluate on the test split, promote a better challenger."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from prefect import task

from cxrmodel.config import EvaluationConfig, ThresholdConfig
from cxrmodel.explain.embedding_map import embedding_map
from cxrmodel.findings import FINDINGS
from cxrmodel.data.metadata import labels_matrix
from cxrmodel.evaluation.metrics import evaluate_multilabel
from cxrmodel.evaluation.thresholds import calibrate_thresholds as calibrate, save_thresholds_json
from db import repository as repo
from db.engine import session_scope
from db.models import Evaluation, ModelVersion
from tasks.artifacts import markdown_link, markdown_table, md, publish_markdown, publish_table, role_key
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
        is_champion = session.get(ModelVersion, version_id).status == "champion"
    publish_table(
        role_key("cxr-thresholds", None if is_champion else loaded.kind),
        _thresholds_table(dict(zip(FINDINGS, (float(t) for t in result.thresholds))), result.notes),
        description=f"Thresholds of {name} ({result.method}), set {set_id}",
    )
    return set_id


def _none_if_nan(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _add_calibration_error(per_class: list[dict], aggregates: dict, labels: np.ndarray, probs: np.ndarray, n_bins: int) -> None:
    from cxrmodel.evaluation.calibration import expected_calibration_error  # TEMP lazy until the module lands

    for j, row in enumerate(per_class):
        row["ece"] = expected_calibration_error(labels[:, j], probs[:, j], n_bins=n_bins)
    aggregates["mean_ece"] = float(np.mean([row["ece"] for row in per_class]))


def _add_intervals(per_class: list[dict], aggregates: dict, labels, probs, thresholds, patients, config: EvaluationConfig) -> None:
    """95 % (``config.confidence``) bootstrap intervals over patients for AUROC and F1."""
    from cxrmodel.evaluation.bootstrap import bootstrap_ci  # TEMP lazy

    boot = bootstrap_ci(labels, probs, thresholds, patients, config.n_bootstrap, config.confidence, config.random_state)
    for j, row in enumerate(per_class):
        row["auroc_ci_low"], row["auroc_ci_high"] = (_none_if_nan(v) for v in boot.auroc_ci[j])
        row["f1_ci_low"], row["f1_ci_high"] = (_none_if_nan(v) for v in boot.f1_ci[j])
    aggregates["macro_auroc_ci_low"], aggregates["macro_auroc_ci_high"] = (_none_if_nan(v) for v in boot.macro_auroc_ci)
    aggregates["macro_f1_ci_low"], aggregates["macro_f1_ci_high"] = (_none_if_nan(v) for v in boot.macro_f1_ci)
    aggregates["n_bootstrap"] = boot.n_resamples


def _calibrate_probabilities(per_class: list[dict], aggregates: dict, labels, probs, val_labels, val_probs, config: EvaluationConfig) -> np.ndarray:
    """Fit per-class probability calibration on validation; Brier and ECE after it on ``probs``."""
    from cxrmodel.evaluation.calibration import ProbabilityCalibrator, calibration_summary  # TEMP lazy

    calibrator = ProbabilityCalibrator.fit(val_labels, val_probs, config.calibration)
    calibrated = calibrator.transform(probs)
    for row, after in zip(per_class, calibration_summary(labels, probs, calibrated, n_bins=config.ece_bins)):
        row["brier_calibrated"], row["ece_calibrated"] = after["brier_after"], after["ece_after"]
    for finding, note in calibrator.notes.items():
        run_logger().warning("calibration of %s: %s", finding, note)
    aggregates["calibration_method"] = config.calibration
    aggregates["calibration"] = calibrator.to_dict()
    return calibrated


def _subgroups(labels, probs, thresholds, frame, config: EvaluationConfig) -> list[dict]:
    from cxrmodel.evaluation.subgroups import age_band, subgroup_metrics  # TEMP lazy

    attributes = {"sex": frame["sex"].to_numpy(dtype=object), "age_band": age_band(frame["age"].to_numpy(dtype=float)),
                  "view": frame["view"].to_numpy(dtype=object)}
    return subgroup_metrics(labels, probs, thresholds, attributes, min_studies=config.subgroup_min_studies)


@task(name="evaluate-model")
def evaluate_model(
    database_url: str,
    home: Path,
    version_id: int,
    threshold_set_id: int | None = None,
    split: str = "test",
    config: EvaluationConfig = EvaluationConfig(),
) -> int:
    """Metrics of a model version on ``split`` with its active (or the given) threshold set:
    seed 004's metrics, patient-level bootstrap intervals, calibration error (and optional
    probability calibration fitted on validation), subgroup metrics and an embedding map."""
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
    per_class, aggregates = [dict(row) for row in result.per_class], dict(result.aggregates)
    _add_calibration_error(per_class, aggregates, labels, probs, config.ece_bins)
    if config.n_bootstrap:
        patients = frame["patient_id"].fillna(frame["study_key"]).astype(str).to_numpy()
        _add_intervals(per_class, aggregates, labels, probs, thresholds, patients, config)
    arrays = {"y_true": labels, "y_prob": probs.astype(np.float32), "study_key": frame["study_key"].to_numpy(dtype=str)}
    if config.calibration != "none":
        val_probs, val_labels, _, _ = predict_split(database_url, home, loaded, "val")
        arrays["y_prob_calibrated"] = _calibrate_probabilities(per_class, aggregates, labels, probs, val_labels, val_probs, config).astype(np.float32)
    subgroups = _subgroups(labels, probs, thresholds, frame, config)
    if config.embedding_map and loaded.embedding_head is None and len(frame) >= 4:
        arrays["map_xy"], arrays["map_rows"] = embedding_map(
            loaded.embed_frame(frame, Path(home) / "cache"), config.map_max_points, config.random_state
        )
    np.savez_compressed(folder / f"predictions_{split}.npz", **arrays)
    with session_scope(database_url) as session:
        evaluation = repo.save_evaluation(
            session, version_id, threshold_set_id, split, aggregates, per_class, subgroups, inference_ms_per_image=ms
        )
        evaluation_id = evaluation.id
    _log_evaluation(name, split, aggregates)
    return evaluation_id


def _log_evaluation(name: str, split: str, aggregates: dict) -> None:
    low, high = aggregates.get("macro_auroc_ci_low"), aggregates.get("macro_auroc_ci_high")
    interval = "no CI" if low is None or high is None else f"95% CI {low:.3f}-{high:.3f}"
    run_logger().info(
        "%s on %s: macro AUROC %.3f (%s), macro-F1 %.3f", name, split, aggregates["macro_auroc"] or float("nan"), interval,
        aggregates["macro_f1"],
    )


def _thresholds_table(thresholds: dict[str, float], notes: dict[str, str]) -> list[dict]:
    return [{"finding": f, "threshold": round(float(thresholds[f]), 4), "note": notes.get(f, "")} for f in FINDINGS if f in thresholds]


def evaluation_summary_markdown(record: repo.EvaluationRecord, report_link: str | None = None) -> str:
    """The headline of an evaluation: the aggregate metrics, with their intervals, as a table."""
    agg = record.aggregates
    headline = [
        {"metric": "macro AUROC", "value": agg.get("macro_auroc"), "95% CI": _interval(agg, "macro_auroc")},
        {"metric": "macro F1", "value": agg.get("macro_f1"), "95% CI": _interval(agg, "macro_f1")},
        *({"metric": m.replace("_", " "), "value": agg.get(m), "95% CI": None}
          for m in ("micro_auroc", "micro_f1", "macro_precision", "macro_recall", "exact_match", "hamming_loss", "lrap", "mean_brier", "mean_ece")),
    ]
    lines = [
        f"## {md(record.model_name)} ({md(record.model_kind)}, {md(record.model_status)}) on {md(record.split)}",
        "",
        f"Evaluation {record.evaluation_id}, thresholds: {md(record.threshold_method or '-')}.",
        "",
        markdown_table(headline),
    ]
    if report_link:
        lines += ["", f"Report: {markdown_link('HTML evaluation report', report_link)}"]
    return "\n".join(lines)


def _interval(aggregates: dict, metric: str) -> str | None:
    low, high = aggregates.get(f"{metric}_ci_low"), aggregates.get(f"{metric}_ci_high")
    return None if low is None or high is None else f"{low:.3f}-{high:.3f}"


@task(name="publish-evaluation")
def publish_evaluation(database_url: str, evaluation_id: int) -> str | None:
    """Publish an evaluation's artifacts under the keys of its model version's role: the
    champion's stable keys (``cxr-per-class-metrics``, ``cxr-subgroup-metrics``,
    ``cxr-evaluation-summary``, ``cxr-thresholds``), or those keys suffixed by the model kind for
    a baseline or a challenger that was not promoted. Returns the suffix used (None: champion)."""
    with session_scope(database_url) as session:
        record = repo.evaluation_record(session, evaluation_id)
    kind = None if record.model_status == "champion" else record.model_kind
    what = f"{record.model_name} on {record.split} (evaluation {evaluation_id})"
    publish_table(role_key("cxr-per-class-metrics", kind), record.per_class, description=f"Per-class metrics of {what}")
    publish_table(role_key("cxr-subgroup-metrics", kind), record.subgroups,
                  description=f"Metrics of {what} by sex, age band and view")
    publish_markdown(role_key("cxr-evaluation-summary", kind), evaluation_summary_markdown(record), description=f"Summary of {what}")
    publish_table(role_key("cxr-thresholds", kind), _thresholds_table(record.thresholds, record.threshold_notes),
                  description=f"Thresholds of {record.model_name} ({record.threshold_method})")
    return kind


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
        if current.pinned:
            run_logger().info("kept champion %s: it is pinned (cxr models unpin to allow promotion)", current.name)
            return False
        theirs = session.query(Evaluation).filter_by(model_version_id=current.id, split=split).order_by(Evaluation.id.desc()).first()
        ours_value = getattr(ours, metric) or 0.0
        theirs_value = (getattr(theirs, metric) or 0.0) if theirs else 0.0
        if ours_value > theirs_value + margin:
            repo.promote(session, version_id, f"{metric} {ours_value:.4f} beats champion {current.name} ({theirs_value:.4f}) by more than {margin}")
            return True
        run_logger().info("kept champion %s: %s %.4f vs challenger %.4f", current.name, metric, theirs_value, ours_value)
        return False
