"""The evaluation report: view models over an :class:`~reports.contexts.EvaluationContext` and
its rendering to one self-contained HTML file.

Every figure is embedded as a PNG data URI and all CSS is inline, so a report is a single file
that opens offline and prints cleanly. Research tool only: the report carries the disclaimer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrmodel.io import atomic_write_text
from reports import figures
from reports.common import finding_order
from reports.contexts import ClassMetrics, ComparisonRow, EvaluationContext, Example
from reports.environment import finite_or_none, render_template
from reports.subgroups import subgroup_view

__all__ = [
    "AGGREGATE_LABELS",
    "COMPARISON_COLUMNS",
    "HEADLINE_AGGREGATES",
    "aggregate_rows",
    "calibration_view",
    "evaluation_summary",
    "evaluation_view",
    "has_intervals",
    "per_class_view",
    "render_evaluation_html",
    "render_evaluation_report",
]

# (key, label, higher_is_better)
AGGREGATE_LABELS: tuple[tuple[str, str, bool], ...] = (
    ("macro_auroc", "Macro AUROC", True),
    ("micro_auroc", "Micro AUROC", True),
    ("macro_f1", "Macro F1", True),
    ("micro_f1", "Micro F1", True),
    ("macro_precision", "Macro precision", True),
    ("micro_precision", "Micro precision", True),
    ("macro_recall", "Macro recall", True),
    ("micro_recall", "Micro recall", True),
    ("exact_match", "Exact match (subset accuracy)", True),
    ("hamming_loss", "Hamming loss", False),
    ("accuracy", "Label-wise accuracy", True),
    ("lrap", "Label ranking avg. precision", True),
    ("mean_brier", "Mean Brier score", False),
    ("mean_ece", "Mean expected calibration error", False),
)
#: Aggregate keys that describe the evaluation rather than measure it (shown elsewhere, not as rows).
NON_METRIC_AGGREGATES = frozenset({"n_bootstrap", "calibration_method", "calibration", "confidence"})
HEADLINE_AGGREGATES = ("macro_auroc", "macro_f1", "micro_f1", "exact_match")

# comparison columns: (key, label, higher_is_better or None when not ranked)
COMPARISON_COLUMNS: tuple[tuple[str, str, bool | None], ...] = (
    ("selection_score", "Selection figure", True),
    ("macro_auroc", "Macro AUROC", True),
    ("macro_auroc_ci", "AUROC 95% CI", None),
    ("macro_f1", "Macro F1", True),
    ("micro_f1", "Micro F1", True),
    ("exact_match", "Exact match", True),
    ("hamming_loss", "Hamming loss", False),
    ("lrap", "LRAP", True),
    ("mean_brier", "Brier", False),
    ("parameter_count", "Parameters", None),
    ("inference_ms_per_image", "ms / image", False),
)
INTERVAL_KEYS = ("auroc_ci_low", "auroc_ci_high", "f1_ci_low", "f1_ci_high")
#: Fewer positive studies than this: an interval is flagged as a small sample, not read bare.
SMALL_SAMPLE_POSITIVES = 10
BASIS_LABELS = {"validation": "validation", "cross_validation": "cross-validation"}
POSITIVE_WORDS = frozenset({"positive", "pos", "flagged", "flag", "yes", "1", "true"})
FIGURES = ("confusion", "roc", "roc_grid", "pr", "pr_grid", "reliability", "training", "labels", "embedding_map")


def aggregate_rows(aggregates: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per metric with its interval (``<key>_ci_low``/``<key>_ci_high``, None when absent):
    the known metrics of :data:`AGGREGATE_LABELS` in that order, then any other metric; the
    interval keys, :data:`NON_METRIC_AGGREGATES` and nested mappings are not rows of their own."""
    known = {k for k, _, _ in AGGREGATE_LABELS}

    def row(k: str, label: str, hib: bool | None) -> dict[str, Any]:
        return {
            "key": k,
            "label": label,
            "value": aggregates[k],
            "higher_is_better": hib,
            "ci_low": aggregates.get(f"{k}_ci_low"),
            "ci_high": aggregates.get(f"{k}_ci_high"),
        }

    rows = [row(k, label, hib) for k, label, hib in AGGREGATE_LABELS if k in aggregates]
    rows += [
        row(k, k.replace("_", " "), None)
        for k, v in aggregates.items()
        if k not in known
        and k not in NON_METRIC_AGGREGATES
        and not k.endswith(("_ci_low", "_ci_high"))
        and not isinstance(v, Mapping)
    ]
    return rows


def per_class_view(rows: Sequence[ClassMetrics | Mapping[str, Any]], threshold_values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-class rows as dicts in FINDINGS order, every :class:`~reports.contexts.ClassMetrics`
    field present (None when unknown); a missing threshold falls back to ``threshold_values``.
    Two flags per row: ``below_chance`` (the whole AUROC interval lies below 0.5) and
    ``small_sample`` (an interval exists but rests on fewer than
    :data:`SMALL_SAMPLE_POSITIVES` positive studies)."""
    out = sorted((ClassMetrics.model_validate(r).model_dump() for r in rows), key=lambda r: finding_order(r["finding"]))
    for r in out:
        if r["threshold"] is None:
            r["threshold"] = threshold_values.get(r["finding"])
        high = finite_or_none(r["auroc_ci_high"])
        r["below_chance"] = high is not None and high < 0.5
        has_interval = any(finite_or_none(r[k]) is not None for k in INTERVAL_KEYS)
        r["small_sample"] = has_interval and r["n_positive"] is not None and r["n_positive"] < SMALL_SAMPLE_POSITIVES
    return out


def _mean_known(values: Sequence[Any]) -> float | None:
    known = [v for v in (finite_or_none(x) for x in values) if v is not None]
    return float(np.mean(known)) if known else None


def calibration_view(per_class: Sequence[Mapping[str, Any]], aggregates: Mapping[str, Any], method: str | None) -> dict[str, Any]:
    """Brier and ECE per finding before (raw probabilities) and after the evaluation's probability
    calibration, with a mean row (the aggregates' ``mean_brier``/``mean_ece`` when recorded).
    ``available`` is False when neither ECE nor a calibrated value was recorded; ``calibrated``
    whether any after-value exists; ``not_applied`` the findings whose calibration made the
    validation ECE worse and was therefore not applied (each row's ``not_applied`` holds the
    validation ECE before and after)."""
    not_applied = (aggregates.get("calibration") or {}).get("not_applied") or {}
    rows = [
        {**{k: r.get(k) for k in ("finding", "brier", "ece", "brier_calibrated", "ece_calibrated")}, "not_applied": None}
        for r in per_class
    ]
    for r in rows:
        if r["finding"] in not_applied:
            r["not_applied"] = not_applied[r["finding"]]
    calibrated = any(
        finite_or_none(r["brier_calibrated"]) is not None or finite_or_none(r["ece_calibrated"]) is not None for r in rows
    )

    def recorded_or_mean(key: str) -> float | None:
        if aggregates.get(f"mean_{key}") is not None:
            return finite_or_none(aggregates[f"mean_{key}"])
        return _mean_known([r[key] for r in rows])

    mean = {
        "brier": recorded_or_mean("brier"),
        "ece": recorded_or_mean("ece"),
        "brier_calibrated": _mean_known([r["brier_calibrated"] for r in rows]),
        "ece_calibrated": _mean_known([r["ece_calibrated"] for r in rows]),
    }
    available = calibrated or any(finite_or_none(r["ece"]) is not None for r in rows)
    return {
        "method": method,
        "rows": rows,
        "mean": mean,
        "calibrated": calibrated,
        "available": available,
        "not_applied": [r["finding"] for r in rows if r["not_applied"]],
    }


def has_intervals(per_class: Sequence[Mapping[str, Any]], aggregates: Mapping[str, Any]) -> bool:
    """Whether any per-class or aggregate confidence interval end is a finite number."""
    return any(finite_or_none(r.get(k)) is not None for r in per_class for k in INTERVAL_KEYS) or any(
        finite_or_none(v) is not None for k, v in aggregates.items() if k.endswith(("_ci_low", "_ci_high"))
    )


def evaluation_summary(ctx: EvaluationContext) -> dict[str, Any]:
    """What the HTML report and the model card share: model, data, thresholds, aggregate and
    per-class rows, intervals, calibration and subgroups."""
    aggregates = dict(ctx.aggregates)
    per_class = per_class_view(ctx.per_class, ctx.thresholds.values)
    method = ctx.calibration_method if ctx.calibration_method is not None else aggregates.get("calibration_method")
    return {
        "title": ctx.title,
        "generated_at": ctx.generated_at,
        "model": ctx.model.model_dump(),
        "data": ctx.data.model_dump(),
        "is_synthetic": "synth" in str(ctx.data.source or "").lower(),
        "threshold_method": ctx.thresholds.method,
        "aggregates": aggregate_rows(aggregates),
        "n_bootstrap": aggregates.get("n_bootstrap"),
        "has_intervals": has_intervals(per_class, aggregates),
        "per_class": per_class,
        "calibration": calibration_view(per_class, aggregates, method),
        "subgroups": subgroup_view(ctx.subgroups),
    }


def _comparison_view(rows: Sequence[ComparisonRow]) -> list[dict[str, Any]]:
    """Rows as dicts plus ``best``: the set of column keys where the row holds the best value
    (only with at least two rows, and two values in the column)."""
    out = [
        {
            **r.model_dump(),
            "best": set(),
            "basis_label": BASIS_LABELS.get(r.selection_basis or "", r.selection_basis),
            "below_chance": r.macro_auroc_ci_high is not None and r.macro_auroc_ci_high < 0.5,
        }
        for r in rows
    ]
    if len(out) < 2:
        return out
    for key, _, hib in COMPARISON_COLUMNS:
        if hib is None:
            continue
        values = [(v, i) for i, r in enumerate(out) if (v := finite_or_none(r.get(key))) is not None]
        if len(values) < 2:
            continue
        target = max(v for v, _ in values) if hib else min(v for v, _ in values)
        for v, i in values:
            if v == target:
                out[i]["best"].add(key)
    return out


def _decision(decision: bool | str) -> tuple[str, bool]:
    """``(label, positive)`` of an example's decision: a bool, or a word such as ``"positive"``."""
    if isinstance(decision, bool):
        return ("positive" if decision else "negative"), decision
    return str(decision), str(decision).strip().lower() in POSITIVE_WORDS


def _examples_view(examples: Sequence[Example]) -> list[dict[str, Any]]:
    out = []
    for ex in examples:
        top = []
        for t in ex.top_findings:
            label, positive = _decision(t.decision)
            top.append({"finding": t.finding, "probability": t.probability, "decision": label, "positive": positive})
        out.append({**ex.model_dump(exclude={"top_findings"}), "top_findings": top})
    return out


def _embedding_map_figure(ctx: EvaluationContext) -> tuple[str | None, int]:
    """The map figure and its number of points; (None, 0) when there is no map or it is empty."""
    emap = ctx.embedding_map
    if emap is None or emap.xy.shape[0] == 0:
        return None, 0
    if emap.labels is not None:
        labels, prevalence = emap.labels, None
    else:
        y_true = np.asarray(ctx.y_true)
        labels, prevalence = y_true[emap.rows.astype(np.int64)], y_true.mean(axis=0)
    xy = np.asarray(emap.xy, dtype=float)
    return figures.embedding_map_figure(xy, labels, ctx.findings, prevalence=prevalence), int(xy.shape[0])


def _figures(ctx: EvaluationContext, per_class: list[dict], epochs: list[dict]) -> tuple[dict[str, str | None], int]:
    figs: dict[str, str | None] = dict.fromkeys(FIGURES)
    if per_class:
        figs["confusion"] = figures.confusion_matrices_figure(per_class)
    if ctx.y_true is not None:
        y_true, y_prob, findings = ctx.y_true, ctx.y_prob, ctx.findings
        figs["roc"] = figures.roc_figure(y_true, y_prob, findings)
        figs["roc_grid"] = figures.roc_grid_figure(y_true, y_prob, findings)
        figs["pr"] = figures.pr_figure(y_true, y_prob, findings)
        figs["pr_grid"] = figures.pr_grid_figure(y_true, y_prob, findings)
        figs["reliability"] = figures.reliability_figure(y_true, y_prob, ctx.y_prob_calibrated, findings)
    figs["embedding_map"], n_map = _embedding_map_figure(ctx)
    if epochs:
        figs["training"] = figures.training_curves_figure(epochs)
    if ctx.label_counts:
        figs["labels"] = figures.label_distribution_figure(
            ctx.label_counts, title=ctx.label_counts_title or "Label distribution", xlabel="studies"
        )
    return figs, n_map


def evaluation_view(ctx: EvaluationContext) -> dict[str, Any]:
    """The names ``evaluation.html.j2`` renders, figures included."""
    summary = evaluation_summary(ctx)
    notes = sorted(ctx.thresholds.notes.items(), key=lambda kv: finding_order(kv[0]))
    epochs = [e.model_dump() for e in ctx.epochs]
    examples = _examples_view(ctx.examples)
    figs, n_map = _figures(ctx, summary["per_class"], epochs)
    return {
        **summary,
        "threshold_notes": {k: v for k, v in notes if v},
        "headline": [r for r in summary["aggregates"] if r["key"] in HEADLINE_AGGREGATES],
        "per_class_flags": {
            "small_sample": [r["finding"] for r in summary["per_class"] if r["small_sample"]],
            "below_chance": [r["finding"] for r in summary["per_class"] if r["below_chance"]],
        },
        "small_sample_positives": SMALL_SAMPLE_POSITIVES,
        "comparison": _comparison_view(ctx.comparison),
        "comparison_columns": COMPARISON_COLUMNS,
        "epochs": epochs,
        "examples": examples,
        "has_heatmaps": any(ex["heatmap_data_uri"] for ex in examples),
        "figs": figs,
        "n_map": n_map,
        "has_predictions": ctx.y_true is not None,
        "label_counts_title": ctx.label_counts_title or "Label distribution",
        "limitations": ctx.limitations,
    }


def render_evaluation_html(context: EvaluationContext) -> str:
    """The evaluation report as an HTML string (see :func:`render_evaluation_report`)."""
    if not isinstance(context, EvaluationContext):
        raise TypeError(f"expected an EvaluationContext, got {type(context).__name__}")
    return render_template("evaluation.html.j2", evaluation_view(context))


def render_evaluation_report(context: EvaluationContext, out_path: str | Path) -> Path:
    """Render the model evaluation report of ``context`` to ``out_path`` (atomic write; folders
    created; a failed render keeps the previous file). Returns ``out_path``.

    Images: confusion matrices; with ``y_true``/``y_prob``: ROC (all), ROC (grid), PR (all),
    PR (grid), reliability; training curves when ``epochs``; the embedding map when given;
    label distribution when ``label_counts``; one per example plus one per Grad-CAM overlay.
    """
    return atomic_write_text(Path(out_path), render_evaluation_html(context))
