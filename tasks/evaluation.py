"""Calibrate per-finding thresholds, evaluate on the test split, publish an evaluation's
artifacts (choosing and promoting the champion is :mod:`tasks.selection`).

The work is :mod:`cxrmodel` (load the version, predict a split, fit thresholds,
:func:`cxrmodel.evaluation.evaluate.evaluate`); the rows are :mod:`db.thresholds`,
:mod:`db.evaluations` and :mod:`db.registry`. The tasks add
the log lines and the Prefect artifacts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import task

from cxrmodel.config import EvaluationConfig, ThresholdConfig
from cxrmodel.evaluation.evaluate import arrays_path, evaluate, predict_split, predict_split_reusing, save_arrays
from cxrmodel.evaluation.thresholds import calibrate_thresholds as fit_thresholds
from cxrmodel.evaluation.thresholds import save_thresholds_json
from cxrmodel.findings import FINDINGS
from cxrmodel.layout import HomeLayout
from cxrmodel.models.kinds import NETWORK_KINDS
from cxrmodel.models.loading import LoadedModel, load_model_version
from db import evaluations, registry, thresholds
from db.engine import session_scope
from db.evaluations import EvaluationRecord
from db.statuses import ModelStatus
from tasks.artifacts import markdown_link, markdown_table, md, publish_markdown, publish_table, role_key
from tasks.common import labelled_frame, run_logger

#: A version's probabilities on the validation split, kept for calibration, selection and evaluation.
VALIDATION_FILE = "validation_predictions.npz"


def _load(database_url: str, version_id: int) -> tuple[LoadedModel, str, Path]:
    """(the loaded version, its name, its folder)."""
    with session_scope(database_url) as session:
        files = registry.model_version_files(session, version_id)
    return load_model_version(files), files.name, Path(files.artifact_path).parent


@task(name="calibrate-thresholds")
def calibrate_thresholds(database_url: str, home: Path, version_id: int, config: ThresholdConfig) -> int:
    """Fit per-finding thresholds on the validation split; store them as the active set and as
    ``thresholds.json`` beside the model."""
    loaded, name, folder = _load(database_url, version_id)
    val = predict_split_reusing(
        loaded, labelled_frame(database_url), "val", HomeLayout(Path(home)).cache, folder / VALIDATION_FILE
    )
    result = fit_thresholds(val.labels, val.probabilities, config)
    for finding, note in result.notes.items():
        run_logger().warning("%s: %s", finding, note)
    save_thresholds_json(result, folder / "thresholds.json")
    with session_scope(database_url) as session:
        tset = thresholds.save_threshold_set(
            session, version_id, result.method, config.model_dump(mode="json"), result.as_dict(), result.notes
        )
        is_champion = registry.model_version(session, version_id).status == ModelStatus.CHAMPION
    publish_table(
        role_key("cxr-thresholds", None if is_champion else loaded.kind),
        _thresholds_table(dict(zip(FINDINGS, (float(t) for t in result.thresholds), strict=True)), result.notes),
        description=f"Thresholds of {name} ({result.method}), set {tset.id}",
    )
    return tset.id


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
    probability calibration fitted on validation), subgroup metrics and an embedding map. The
    arrays go to the evaluation's own ``evaluations/<id>/predictions.npz`` beside the model."""
    with session_scope(database_url) as session:
        tset = (
            thresholds.threshold_set(session, threshold_set_id)
            if threshold_set_id
            else thresholds.active_threshold_set(session, version_id)
        )
    if tset is None:
        raise RuntimeError(f"model version {version_id} has no threshold set: run calibration first")
    loaded, name, folder = _load(database_url, version_id)
    frame, cache = labelled_frame(database_url), HomeLayout(Path(home)).cache
    ours = predict_split(loaded, frame, split, cache)
    val = predict_split_reusing(loaded, frame, "val", cache, folder / VALIDATION_FILE) if config.calibration != "none" else None
    is_network = loaded.kind in NETWORK_KINDS  # the map of an embedding baseline would be its parent's
    result = evaluate(
        ours.labels,
        ours.probabilities,
        np.array([tset.values[f] for f in FINDINGS]),
        ours.frame,
        config,
        validation=(val.labels, val.probabilities) if val is not None else None,
        embeddings=loaded.embed_frame(ours.frame, cache)
        if config.embedding_map and is_network and len(ours.frame) >= 4
        else None,
        inference_ms_per_image=ours.ms_per_image,
    )
    for finding, note in result.calibration_notes.items():
        run_logger().warning("calibration of %s: %s", finding, note)
    with session_scope(database_url) as session:
        evaluation = evaluations.save_evaluation(
            session, version_id, tset.id, split, result.aggregates, result.per_class, result.subgroups
        )
        path = save_arrays(arrays_path(folder, evaluation.id), result.arrays)
        evaluations.set_paths(session, evaluation.id, arrays_path=str(path))
    _log_evaluation(name, split, result.aggregates)
    return evaluation.id


def _log_evaluation(name: str, split: str, aggregates: dict) -> None:
    low, high = aggregates.get("macro_auroc_ci_low"), aggregates.get("macro_auroc_ci_high")
    interval = "no CI" if low is None or high is None else f"95% CI {low:.3f}-{high:.3f}"
    run_logger().info(
        "%s on %s: macro AUROC %.3f (%s), macro-F1 %.3f",
        name,
        split,
        aggregates["macro_auroc"] or float("nan"),
        interval,
        aggregates["macro_f1"],
    )


def _thresholds_table(values: dict[str, float], notes: dict[str, str]) -> list[dict]:
    return [{"finding": f, "threshold": round(float(values[f]), 4), "note": notes.get(f, "")} for f in FINDINGS if f in values]


def evaluation_summary_markdown(record: EvaluationRecord, report_link: str | None = None) -> str:
    """The headline of an evaluation: the aggregate metrics, with their intervals, as a table."""
    agg = record.aggregates
    headline = [
        {"metric": "macro AUROC", "value": agg.get("macro_auroc"), "95% CI": _interval(agg, "macro_auroc")},
        {"metric": "macro F1", "value": agg.get("macro_f1"), "95% CI": _interval(agg, "macro_f1")},
        *(
            {"metric": m.replace("_", " "), "value": agg.get(m), "95% CI": None}
            for m in (
                "micro_auroc",
                "micro_f1",
                "macro_precision",
                "macro_recall",
                "exact_match",
                "hamming_loss",
                "lrap",
                "mean_brier",
                "mean_ece",
            )
        ),
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
        record = evaluations.evaluation_record(session, evaluation_id)
    kind = None if record.model_status == ModelStatus.CHAMPION else record.model_kind
    what = f"{record.model_name} on {record.split} (evaluation {evaluation_id})"
    publish_table(role_key("cxr-per-class-metrics", kind), record.per_class, description=f"Per-class metrics of {what}")
    publish_table(
        role_key("cxr-subgroup-metrics", kind), record.subgroups, description=f"Metrics of {what} by sex, age band and view"
    )
    publish_markdown(
        role_key("cxr-evaluation-summary", kind), evaluation_summary_markdown(record), description=f"Summary of {what}"
    )
    publish_table(
        role_key("cxr-thresholds", kind),
        _thresholds_table(record.thresholds, record.threshold_notes),
        description=f"Thresholds of {record.model_name} ({record.threshold_method})",
    )
    return kind
