"""The evaluation and nightly scoring reports: read with :mod:`db.report_queries`, build the typed
contexts of :mod:`reports.contexts` (examples decoded and explained with :mod:`cxrmodel`),
render with :mod:`reports`, publish the link artifacts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from prefect import task

from cxrmodel.data.imaging import read_grayscale
from cxrmodel.findings import FINDINGS
from cxrmodel.layout import HomeLayout
from db import report_queries
from db.engine import session_scope
from db.entities import ModelVersionInfo, StudyInfo
from db.evaluations import set_paths
from db.statuses import ModelStatus
from db.studies import image_paths
from reports import (
    EvaluationContext,
    ScoringContext,
    build_export_bundle,
    render_evaluation_report,
    render_scoring_report,
)
from reports.figures import gradcam_overlay, image_to_data_uri
from tasks.artifacts import publish_report_link, role_key
from tasks.common import run_logger

#: The number of example studies (with Grad-CAM overlays) in an evaluation report.
N_EXAMPLES = 4


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment is not None else None


# --------------------------------------------------------------------------- evaluation


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of one evaluation's npz (see :func:`db.report_queries.evaluation_arrays_file`)."""
    with np.load(path, allow_pickle=False) as stored:
        return {key: stored[key] for key in stored.files}


def _examples(
    studies: dict[str, StudyInfo], keys: np.ndarray, y_prob: np.ndarray, thresholds: dict[str, float], rows: np.ndarray
) -> list[dict]:
    """The studies at ``rows`` with their image and top three findings."""
    examples = []
    for i in rows:
        key = str(keys[i])
        top = np.argsort(-y_prob[i])[:3]
        examples.append(
            {
                "study_key": key,
                "image_data_uri": image_to_data_uri(read_grayscale(studies[key].image_path), max_side=256),
                "top_findings": [(FINDINGS[j], float(y_prob[i, j]), bool(y_prob[i, j] >= thresholds[FINDINGS[j]])) for j in top],
                "gradcam_finding": FINDINGS[int(top[0])],
            }
        )
    return examples


def _add_gradcam(home: Path, model: ModelVersionInfo, studies: dict[str, StudyInfo], examples: list[dict]) -> None:
    """Give each example a Grad-CAM overlay for its top finding, computed on the model's own
    input (image cache, eval transform, patient features as scoring encodes them) by
    :func:`cxrmodel.explain.explanations.study_gradcam`, as the service draws it; a model
    without Grad-CAM gets the note :func:`~cxrmodel.explain.explanations.gradcam_unavailable`
    gives. A failure leaves the examples without heat maps (with a warning): the heat maps
    illustrate the report, they are not it."""
    import pandas as pd
    import torch

    from cxrmodel.data.cache import ImageCache
    from cxrmodel.data.metadata import patient_features
    from cxrmodel.explain.explanations import gradcam_unavailable, study_gradcam
    from cxrmodel.models.loading import load_model_version

    if not examples:
        return
    if (reason := gradcam_unavailable(model.kind)) is not None:
        for ex in examples:
            ex["gradcam_note"] = reason
        return
    try:
        loaded = load_model_version(model.files())
        cache = ImageCache(HomeLayout(Path(home)).cache, loaded.image_size)
        for ex in examples:
            study = studies[ex["study_key"]]
            image = loaded.input_transform(
                torch.from_numpy(cache.get(study.study_key, study.image_path, study.content_hash))[None]
            )
            patient = torch.from_numpy(
                patient_features(pd.DataFrame({"age": [study.age], "sex": [study.sex], "view": [study.view]}), loaded.age_scaler)[
                    0
                ]
            )
            grey, heat = study_gradcam(loaded, image, patient, ex["gradcam_finding"])
            ex["heatmap_data_uri"] = gradcam_overlay(grey, heat)
    except (KeyError, OSError, RuntimeError, ValueError) as exc:  # integrity and decode errors included
        run_logger().warning("evaluation report without Grad-CAM heat maps: %s", exc)
        for ex in examples:
            ex.pop("heatmap_data_uri", None)
            ex["gradcam_note"] = "Grad-CAM heat map unavailable (see the flow log)."


def evaluation_context(database_url: str, home: Path, evaluation_id: int) -> tuple[EvaluationContext, ModelVersionInfo]:
    """The report context of one evaluation and its model version. The arrays come from the
    evaluation's own npz (the legacy per-model file for evaluations stored before it had one)."""
    with session_scope(database_url) as session:
        data = report_queries.evaluation_report_data(session, evaluation_id)
    record, model = data.record, data.model
    arrays = _load_arrays(data.arrays_file)
    y_true, y_prob, keys = arrays["y_true"], arrays["y_prob"], arrays["study_key"]
    rows = np.argsort(-y_prob.max(axis=1))[:N_EXAMPLES] if record.thresholds else np.zeros(0, dtype=np.int64)
    with session_scope(database_url) as session:
        studies = report_queries.studies_by_key(session, (str(keys[i]) for i in rows))
    examples = _examples(studies, keys, y_prob, record.thresholds, rows)
    _add_gradcam(home, model, studies, examples)
    has_map = "map_xy" in arrays and "map_rows" in arrays
    context = EvaluationContext(
        title=f"Evaluation of {model.name} on the {record.split} split",
        generated_at=_now(),
        evaluation_id=evaluation_id,
        model={
            "name": model.name,
            "kind": model.kind,
            "id": model.id,
            "sha256": model.sha256,
            "parameter_count": model.parameter_count,
            "created_at": _iso(model.created_at),
        },
        data={
            "source": data.source,
            "split": record.split,
            "n_studies": len(y_true),
            "n_train": data.studies_per_split["train"],
            "n_val": data.studies_per_split["val"],
            "n_test": data.studies_per_split["test"],
        },
        thresholds={"method": record.threshold_method, "values": record.thresholds, "notes": record.threshold_notes},
        aggregates=record.aggregates,
        per_class=record.per_class,
        subgroups=record.subgroups,
        comparison=data.comparison,
        epochs=data.epochs,
        y_true=y_true,
        y_prob=y_prob,
        y_prob_calibrated=arrays.get("y_prob_calibrated"),
        embedding_map={"xy": arrays["map_xy"], "rows": arrays["map_rows"]} if has_map else None,
        examples=examples,
    )
    return context, model


@task(name="render-evaluation-report")
def render_evaluation(database_url: str, home: Path, evaluation_id: int) -> str:
    """Write the self-contained HTML evaluation report of one evaluation and its export bundle
    (zip: report, per-class CSV, thresholds.json, subgroup CSV, model card); return the report path.

    The links go under the keys of the evaluated version's role (as :func:`tasks.evaluation.
    publish_evaluation`'s): ``cxr-evaluation-report`` and ``cxr-evaluation-bundle`` only for
    the champion, the keys suffixed by the model kind for any other version, so rendering an
    older or a candidate's evaluation never replaces the champion's report link."""
    context, model = evaluation_context(database_url, home, evaluation_id)
    role = None if model.status == ModelStatus.CHAMPION else str(model.kind)
    name = context.model.name
    reports = HomeLayout(Path(home)).reports
    out = reports / f"evaluation_{evaluation_id}_{name}.html"
    render_evaluation_report(context, out)
    bundle = build_export_bundle(context, out, out.with_name(f"{out.stem}_bundle.zip"))
    with session_scope(database_url) as session:
        set_paths(session, evaluation_id, report_path=str(out), bundle_path=str(bundle))
    publish_report_link(role_key("cxr-evaluation-report", role), out, reports, description=f"HTML evaluation report of {name}")
    publish_report_link(
        role_key("cxr-evaluation-bundle", role),
        bundle,
        reports,
        description=f"Export bundle of evaluation {evaluation_id} ({name}): report, per-class metrics CSV, "
        "thresholds.json, subgroup metrics, model card",
    )
    run_logger().info("evaluation report: %s; export bundle: %s", out, bundle)
    return str(out)


# --------------------------------------------------------------------------- scoring


def _with_similar_cases(database_url: str, version_id: int, top: dict[str, list[tuple]], k: int = 3) -> dict[str, list[tuple]]:
    """``top`` with a third element per study: its ``k`` most similar labelled studies as
    ``(study_key, cosine, findings)``, as the service finds them. Unchanged for a model without
    similar cases (:func:`cxrmodel.explain.explanations.similar_cases_unavailable`), and (with a
    warning) when the lookup fails: the similar cases are a help, not the report."""
    from cxrmodel.explain.explanations import similar_cases_unavailable
    from cxrmodel.models.artifacts import ArtifactIntegrityError
    from db.registry import model_version
    from tasks.similarity import load_index, similar_to

    keys = sorted({key for rows in top.values() for key, *_ in rows})
    with session_scope(database_url) as session:
        kind = model_version(session, version_id).kind
    if not keys or similar_cases_unavailable(kind) is not None:
        return top
    try:
        with session_scope(database_url) as session:
            paths = image_paths(session, keys)
        loaded, index, _ = load_index(database_url, version_id)
        similar = similar_to(database_url, loaded, index, paths, k)
    except (ArtifactIntegrityError, RuntimeError, ValueError, OSError) as exc:
        run_logger().warning("scoring report without similar cases: %s", exc)
        return top
    return {
        finding: [
            (key, p, [(s["study_key"], s["cosine"], s["findings_text"]) for s in similar.get(key, [])]) for key, p, *_ in rows
        ]
        for finding, rows in top.items()
    }


def scoring_context(database_url: str, scoring_run_id: int) -> ScoringContext:
    """The report context of one scoring run (similar cases included when the model has an index)."""
    with session_scope(database_url) as session:
        data = report_queries.scoring_report_data(session, scoring_run_id)
    summary, last = data.summary, data.last_refresh
    n_scored = summary.n_scored
    flags = [
        {
            "finding": f,
            "n_flagged": summary.flagged.get(f, 0),
            "flag_rate": summary.flagged.get(f, 0) / n_scored if n_scored else None,
            "training_prevalence": data.training_prevalence[f],
        }
        for f in FINDINGS
    ]
    return ScoringContext(
        title=f"Nightly scoring run {scoring_run_id}",
        generated_at=_now(),
        run={
            "id": summary.scoring_run_id,
            "model_name": summary.model_name,
            "threshold_set_id": summary.threshold_set_id,
            "started_at": _iso(summary.started_at),
            "finished_at": _iso(summary.finished_at),
            "n_scored": n_scored,
            "n_skipped": summary.n_skipped,
            "n_failed": summary.n_failed,
        },
        refresh=None
        if last is None
        else {"id": last.id, "status": last.status, "error": last.error, "started_at": _iso(last.started_at)},
        failures=[{"study_key": key, "reason": reason} for key, reason in data.failures],
        flags=flags,
        top_studies=_with_similar_cases(database_url, data.run.model_version_id, data.top_studies),
        retrieval=_retrieval_note(database_url, data.run.model_version_id),
    )


def _retrieval_note(database_url: str, version_id: int) -> dict | None:
    """The precision@k stored with the embedding index serving ``version_id`` (None without one)."""
    from db.registry import indexed_network

    try:
        with session_scope(database_url) as session:
            config = indexed_network(session, version_id).config or {}
    except (RuntimeError, ValueError):
        return None
    if "retrieval_precision_at_k" not in config:
        return None
    return {
        "k": config["retrieval_k"],
        "precision": config["retrieval_precision_at_k"],
        "random": config["retrieval_random_precision_at_k"],
        "prevalence": config["retrieval_prevalence_precision_at_k"],
        "n": config["retrieval_n"],
    }


@task(name="render-scoring-report")
def render_scoring(database_url: str, home: Path, scoring_run_id: int) -> str:
    """Write the nightly scoring report of one scoring run; return its path."""
    out = HomeLayout(Path(home)).reports / f"scoring_{scoring_run_id}.html"
    render_scoring_report(scoring_context(database_url, scoring_run_id), out)
    publish_report_link(
        "cxr-scoring-report", out, HomeLayout(Path(home)).reports, description=f"HTML report of scoring run {scoring_run_id}"
    )
    return str(out)
