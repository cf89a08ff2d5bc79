"""Render reports from database rows and stored test predictions."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from prefect import task

from cxrmodel.findings import FINDINGS
from cxrmodel.data.imaging import read_grayscale
from db import repository as repo
from db.engine import session_scope
from tasks.artifacts import publish_report_link
from tasks.common import run_logger
from db.models import ClassMetric, Evaluation, ModelVersion, ScoringFailure, ScoringRun, Study, ThresholdSet
from reports.bundle import build_export_bundle
from reports.figures import gradcam_overlay, image_to_data_uri
from reports.render import render_evaluation_report, render_scoring_report

COMPARISON_FIELDS = ("macro_auroc", "macro_auroc_ci_low", "macro_auroc_ci_high", "macro_f1", "micro_f1", "exact_match",
                     "hamming_loss", "lrap", "mean_brier", "inference_ms_per_image")
#: Evaluation columns that are not metrics of the report's summary table.
NOT_AGGREGATES = ("id", "model_version_id", "threshold_set_id", "split", "report_path", "bundle_path", "created_at",
                  "calibration")
N_EXAMPLES = 4


def _examples(database_url: str, keys: np.ndarray, y_prob: np.ndarray, thresholds: dict[str, float], n: int = N_EXAMPLES) -> list[dict]:
    """The ``n`` test studies with the most confident positive call, with their top findings."""
    order = np.argsort(-y_prob.max(axis=1))[:n]
    with session_scope(database_url) as session:
        paths = dict(session.query(Study.study_key, Study.image_path).filter(Study.study_key.in_([str(keys[i]) for i in order])).all())
    examples = []
    for i in order:
        key = str(keys[i])
        top = np.argsort(-y_prob[i])[:3]
        examples.append(
            {
                "study_key": key,
                "image_data_uri": image_to_data_uri(read_grayscale(paths[key]), max_side=256),
                "top_findings": [(FINDINGS[j], float(y_prob[i, j]), bool(y_prob[i, j] >= thresholds[FINDINGS[j]])) for j in top],
                "gradcam_finding": FINDINGS[int(top[0])],
            }
        )
    return examples


def _add_gradcam(database_url: str, home: Path, version: ModelVersion, examples: list[dict]) -> None:
    """Give each example a Grad-CAM overlay for its top finding, computed with the evaluated
    network on the model's own input (image cache, eval transform, patient features as scoring
    encodes them). Embedding baselines (k-NN, MLP) get a note instead: their scores come from a
    head on the parent's embedding, not from the network's logits. A failure leaves the examples
    without heat maps (with a warning): the heat maps illustrate the report, they are not it."""
    import pandas as pd
    import torch

    from cxrmodel.data.cache import ImageCache
    from cxrmodel.explain.gradcam import grad_cam
    from cxrmodel.data.metadata import patient_features
    from cxrmodel.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
    from tasks.models import NETWORK_KINDS, load_model_version

    if not examples:
        return
    if version.kind not in NETWORK_KINDS:
        for ex in examples:
            ex["gradcam_note"] = f"No Grad-CAM for the {version.kind} baseline: its scores come from a head on image embeddings, not from the network's logits."
        return
    try:
        loaded = load_model_version(version)
        with session_scope(database_url) as session:
            studies = {s.study_key: s for s in session.query(Study).filter(Study.study_key.in_([ex["study_key"] for ex in examples]))}
        cache, transform = ImageCache(Path(home) / "cache", loaded.image_size), eval_transform(loaded.image_size)
        for ex in examples:
            study = studies[ex["study_key"]]
            image = transform(torch.from_numpy(cache.get(study.study_key, study.image_path))[None])
            patient = torch.from_numpy(patient_features(
                pd.DataFrame({"age": [study.age], "sex": [study.sex], "view": [study.view]}), loaded.age_scaler))
            heat = grad_cam(loaded.network, image[None], patient, FINDINGS.index(ex["gradcam_finding"]))
            grey = image[0].numpy() * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # what the network saw, un-normalised
            ex["heatmap_data_uri"] = gradcam_overlay(grey, heat)
    except (KeyError, OSError, RuntimeError, ValueError) as exc:  # integrity and decode errors included
        run_logger().warning("evaluation report without Grad-CAM heat maps: %s", exc)
        for ex in examples:
            ex.pop("heatmap_data_uri", None)
            ex["gradcam_note"] = "Grad-CAM heat map unavailable (see the flow log)."


def _optional(stored, key: str) -> np.ndarray | None:
    return stored[key] if key in stored.files else None


def evaluation_context(database_url: str, home: Path, evaluation_id: int) -> tuple[dict, ModelVersion]:
    """The report context of one evaluation (see :func:`reports.render.render_evaluation_report`)."""
    with session_scope(database_url) as session:
        ev = session.get(Evaluation, evaluation_id)
        if ev is None:
            raise ValueError(f"no evaluation with id {evaluation_id}")
        version = session.get(ModelVersion, ev.model_version_id)
        tset = session.get(ThresholdSet, ev.threshold_set_id) if ev.threshold_set_id else None
        thresholds = {t.finding: t.threshold for t in tset.thresholds} if tset else {}
        notes = {t.finding: t.note for t in tset.thresholds if t.note} if tset else {}
        per_class = [
            {c.name: getattr(m, c.name) for c in ClassMetric.__table__.columns if c.name != "evaluation_id"}
            for m in ev.class_metrics
        ]
        aggregates = {c.name: getattr(ev, c.name) for c in Evaluation.__table__.columns if c.name not in NOT_AGGREGATES}
        subgroups = [
            {c.name: getattr(m, c.name) for c in m.__table__.columns if c.name != "evaluation_id"}
            for m in getattr(ev, "subgroup_metrics", None) or []
        ]
        comparison = [
            {"name": m.name, "kind": m.kind, "status": m.status, "parameter_count": m.parameter_count,
             "is_current": m.id == version.id, **{f: getattr(e, f, None) for f in COMPARISON_FIELDS}}
            for e, m in repo.latest_evaluations(session, ev.split)
        ]
        epochs = repo.epoch_history(session, version.parent_id or version.id)
        counts = {s: session.query(Study).filter(Study.labelled.is_(True), Study.split == s, Study.status == "active").count() for s in ("train", "val", "test")}
        source = session.query(Study.source).filter(Study.labelled.is_(True)).first()
        model = {"name": version.name, "kind": version.kind, "id": version.id, "sha256": version.sha256,
                 "parameter_count": version.parameter_count, "created_at": version.created_at.isoformat(timespec="seconds")}
        split, method = ev.split, tset.method if tset else None
    stored = np.load(Path(version.artifact_path).parent / f"predictions_{split}.npz", allow_pickle=False)
    y_true, y_prob, keys = stored["y_true"], stored["y_prob"], stored["study_key"]
    map_xy, map_rows = _optional(stored, "map_xy"), _optional(stored, "map_rows")
    examples = _examples(database_url, keys, y_prob, thresholds) if thresholds else []
    _add_gradcam(database_url, home, version, examples)
    context = {
        "title": f"Evaluation of {model['name']} on the {split} split",
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "evaluation_id": evaluation_id,
        "model": model,
        "data": {"source": source[0] if source else None, "split": split, "n_studies": int(len(y_true)),
                 "n_train": counts["train"], "n_val": counts["val"], "n_test": counts["test"]},
        "thresholds": {"method": method, "values": thresholds, "notes": notes},
        "aggregates": aggregates,
        "per_class": per_class,
        "subgroups": subgroups,
        "comparison": comparison,
        "epochs": epochs,
        "y_true": y_true,
        "y_prob": y_prob,
        "y_prob_calibrated": _optional(stored, "y_prob_calibrated"),
        "embedding_map": {"xy": map_xy, "rows": map_rows} if map_xy is not None and map_rows is not None else None,
        "examples": examples,
    }
    return context, version


@task(name="render-evaluation-report")
def render_evaluation(database_url: str, home: Path, evaluation_id: int) -> str:
    """Write the self-contained HTML evaluation report of one evaluation and its export bundle
    (zip: report, per-class CSV, thresholds.json, subgroup CSV, model card); return the report path."""
    context, version = evaluation_context(database_url, home, evaluation_id)
    name = context["model"]["name"]
    out = Path(home) / "reports" / f"evaluation_{evaluation_id}_{name}.html"
    render_evaluation_report(context, out)
    bundle = build_export_bundle(context, out, out.with_name(f"{out.stem}_bundle.zip"))
    with session_scope(database_url) as session:
        ev = session.get(Evaluation, evaluation_id)
        ev.report_path = str(out)
        if hasattr(ev, "bundle_path"):
            ev.bundle_path = str(bundle)
    reports = Path(home) / "reports"
    publish_report_link("cxr-evaluation-report", out, reports, description=f"HTML evaluation report of {name}")
    publish_report_link("cxr-evaluation-bundle", bundle, reports,
                        description=f"Export bundle of evaluation {evaluation_id} ({name}): report, per-class metrics CSV, "
                        "thresholds.json, subgroup metrics, model card")
    run_logger().info("evaluation report: %s; export bundle: %s", out, bundle)
    return str(out)


def _with_similar_cases(database_url: str, version_id: int, top: dict[str, list[tuple]], k: int = 3) -> dict[str, list[tuple]]:
    """``top`` with a third element per study: its ``k`` most similar labelled studies as
    ``(study_key, cosine, findings)``. Unchanged (with a warning) when the model has no
    embedding index or the lookup fails: the similar cases are a help, not the report."""
    from cxrmodel.models.artifacts import ArtifactIntegrityError
    from tasks.similarity import load_index, similar_to

    keys = sorted({key for rows in top.values() for key, *_ in rows})
    if not keys:
        return top
    try:
        with session_scope(database_url) as session:
            paths = dict(session.query(Study.study_key, Study.image_path).filter(Study.study_key.in_(keys)).all())
        loaded, index, _ = load_index(database_url, version_id)
        similar = similar_to(database_url, loaded, index, paths, k)
    except (ArtifactIntegrityError, RuntimeError, ValueError, OSError) as exc:
        run_logger().warning("scoring report without similar cases: %s", exc)
        return top
    return {
        finding: [(key, p, [(s["study_key"], s["cosine"], s["findings_text"]) for s in similar.get(key, [])]) for key, p, *_ in rows]
        for finding, rows in top.items()
    }


@task(name="render-scoring-report")
def render_scoring(database_url: str, home: Path, scoring_run_id: int) -> str:
    """Write the nightly scoring report of one scoring run; return its path."""
    from sqlalchemy import func, select

    from db.models import Prediction, StudyLabel

    with session_scope(database_url) as session:
        run = session.get(ScoringRun, scoring_run_id)
        version = session.get(ModelVersion, run.model_version_id)
        failures = [
            {"study_key": key, "reason": reason}
            for key, reason in session.execute(
                select(Study.study_key, ScoringFailure.reason).join(Study, Study.id == ScoringFailure.study_id)
                .where(ScoringFailure.scoring_run_id == scoring_run_id).order_by(Study.study_key)
            )
        ]
        flagged = dict(session.execute(
            select(Prediction.finding, func.count()).where(Prediction.scoring_run_id == scoring_run_id, Prediction.decision.is_(True))
            .group_by(Prediction.finding)
        ).all())
        top = {}
        for finding in FINDINGS:
            top[finding] = [
                (k, float(p)) for k, p in session.execute(
                    select(Study.study_key, Prediction.probability).join(Study, Study.id == Prediction.study_id)
                    .where(Prediction.scoring_run_id == scoring_run_id, Prediction.finding == finding)
                    .order_by(Prediction.probability.desc()).limit(3)
                )
            ]
        info = {"id": run.id, "model_name": version.name, "threshold_set_id": run.threshold_set_id,
                "started_at": run.started_at.isoformat(timespec="seconds"),
                "finished_at": run.finished_at.isoformat(timespec="seconds") if run.finished_at else None,
                "n_scored": run.n_scored, "n_skipped": run.n_skipped, "n_failed": run.n_failed}
        n_train = session.query(Study).filter(Study.labelled.is_(True), Study.split == "train").count()
        positives = dict(session.execute(
            select(StudyLabel.finding, func.sum(StudyLabel.value)).join(Study, Study.id == StudyLabel.study_id)
            .where(Study.split == "train").group_by(StudyLabel.finding)
        ).all())
        train_prevalence = {f: (float(positives.get(f) or 0) / n_train) if n_train else None for f in FINDINGS}
        last_refresh = repo.latest_refresh_before(session, run.started_at)
        refresh = None if last_refresh is None else {
            "id": last_refresh.id, "status": last_refresh.status, "error": last_refresh.error,
            "started_at": last_refresh.started_at.isoformat(timespec="seconds"),
        }
    top = _with_similar_cases(database_url, run.model_version_id, top)
    flags = [
        {"finding": f, "n_flagged": int(flagged.get(f, 0)), "flag_rate": (flagged.get(f, 0) / info["n_scored"]) if info["n_scored"] else None,
         "training_prevalence": train_prevalence[f]}
        for f in FINDINGS
    ]
    context = {"title": f"Nightly scoring run {scoring_run_id}", "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "run": info, "refresh": refresh, "failures": failures, "flags": flags, "top_studies": top}
    out = Path(home) / "reports" / f"scoring_{scoring_run_id}.html"
    render_scoring_report(context, out)
    publish_report_link("cxr-scoring-report", out, Path(home) / "reports", description=f"HTML report of scoring run {scoring_run_id}")
    return str(out)
