"""Render self-contained HTML reports (evaluation, nightly scoring) with Jinja2.

The inputs are plain dicts, lists and numpy arrays; nothing here imports the database
layer or Prefect. Every figure is embedded as a PNG data URI and all CSS is inline, so a
report is a single file that opens offline and prints cleanly.

Research tool only: every report carries the :data:`DISCLAIMER` banner.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from cxrmodel.findings import FINDING_INDEX, FINDINGS
from cxrmodel.io import atomic_write_text
from cxrmodel.evaluation.subgroups import AGE_BANDS, UNKNOWN, subgroup_gaps
from reports import figures

__all__ = [
    "DISCLAIMER",
    "TEMPLATES_DIR",
    "env",
    "fmt",
    "fmt_ci",
    "pct",
    "render_evaluation_html",
    "render_evaluation_report",
    "drift_status",
    "render_scoring_html",
    "render_scoring_report",
]

TEMPLATES_DIR = Path(__file__).parent / "templates"

DISCLAIMER = (
    "Research use only — not a medical device. "
    "These outputs have not been clinically validated and must not be used for diagnosis, "
    "triage or any treatment decision."
)

EMPTY = "—"


# --------------------------------------------------------------------------- filters


def fmt(value: Any, digits: int = 3) -> str:
    """Format a number for a table cell.

    ``None`` and non-finite floats give ``'—'``; booleans give ``'yes'``/``'no'``;
    integers (Python or numpy) get thousands separators (``12345 -> '12,345'``); other
    real numbers are shown with ``digits`` decimals (``0.12345 -> '0.123'``). Anything
    else is passed through ``str``.
    """
    if value is None:
        return EMPTY
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        v = float(value)
        if not math.isfinite(v):
            return EMPTY
        return f"{v:,.{digits}f}"
    return str(value)


def pct(value: Any, digits: int = 1) -> str:
    """A fraction as a percentage (``0.1234 -> '12.3%'``); ``None``/non-finite give ``'—'``."""
    if value is None or isinstance(value, bool):
        return EMPTY
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(v):
        return EMPTY
    return f"{100.0 * v:.{digits}f}%"


def fmt_ci(low: Any, high: Any, digits: int = 3) -> str:
    """A confidence interval as ``'0.781–0.843'``; ``'—'`` unless both ends are finite numbers."""
    lo, hi = _number(low), _number(high)
    if lo is None or hi is None:
        return EMPTY
    return f"{lo:.{digits}f}–{hi:.{digits}f}"


def _short_hash(value: Any, n: int = 12) -> str:
    if value is None:
        return EMPTY
    s = str(value)
    return s if len(s) <= n else s[:n] + "…"


env = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=select_autoescape(["html", "j2", "html.j2"], default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters["fmt"] = fmt
env.filters["pct"] = pct
env.filters["short_hash"] = _short_hash
env.filters["ci"] = fmt_ci
env.filters["md"] = lambda value: " ".join(str(value).split()).replace("|", "\\|")  # a Markdown table cell
env.globals["DISCLAIMER"] = DISCLAIMER


# --------------------------------------------------------------------------- helpers

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

EVALUATION_KEYS = (
    "title", "generated_at", "model", "data", "thresholds", "aggregates",
    "per_class", "comparison", "epochs", "y_true", "y_prob",
)
SCORING_KEYS = ("title", "generated_at", "run", "failures", "flags", "top_studies")


def _require(context: Mapping[str, Any], keys: Sequence[str], what: str) -> None:
    missing = [k for k in keys if k not in context]
    if missing:
        raise KeyError(f"{what} context is missing key(s): {', '.join(missing)}")


def _finding_order(name: Any) -> tuple[int, str]:
    return (FINDING_INDEX.get(str(name), len(FINDING_INDEX)), str(name))


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _aggregate_rows(aggregates: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per metric with its interval (``<key>_ci_low``/``<key>_ci_high``, None when absent);
    the interval keys and :data:`NON_METRIC_AGGREGATES` are not rows of their own."""
    known = {k for k, _, _ in AGGREGATE_LABELS}

    def row(k: str, label: str, hib: bool | None) -> dict[str, Any]:
        return {"key": k, "label": label, "value": aggregates[k], "higher_is_better": hib,
                "ci_low": aggregates.get(f"{k}_ci_low"), "ci_high": aggregates.get(f"{k}_ci_high")}

    rows = [row(k, label, hib) for k, label, hib in AGGREGATE_LABELS if k in aggregates]
    rows += [
        row(k, k.replace("_", " "), None)
        for k, v in aggregates.items()
        if k not in known and k not in NON_METRIC_AGGREGATES and not k.endswith(("_ci_low", "_ci_high"))
        and not isinstance(v, Mapping)
    ]
    return rows


def _comparison_view(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows as dicts plus ``best``: the set of column keys where the row holds the best value."""
    out = [dict(r) for r in rows]
    for r in out:
        r["best"] = set()
    if len(out) < 2:
        return out
    for key, _, hib in COMPARISON_COLUMNS:
        if hib is None:
            continue
        values = [(_number(r.get(key)), i) for i, r in enumerate(out)]
        values = [(v, i) for v, i in values if v is not None]
        if len(values) < 2:
            continue
        target = max(v for v, _ in values) if hib else min(v for v, _ in values)
        for v, i in values:
            if v == target:
                out[i]["best"].add(key)
    return out


def _check_data_uri(uri: Any, where: str) -> str:
    """Examples must be embedded images, never a link that would leave the file."""
    if not isinstance(uri, str) or not uri.startswith("data:image/"):
        raise ValueError(f"{where}: image_data_uri / heatmap_data_uri must be a 'data:image/...' URI, "
                         f"got {str(uri)[:40]!r}")
    return uri


def _examples_view(examples: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    out = []
    for i, ex in enumerate(examples or []):
        top = []
        for item in ex.get("top_findings", []):
            finding, prob, decision = item
            if isinstance(decision, bool | np.bool_):
                positive, label = bool(decision), ("positive" if decision else "negative")
            else:
                label = str(decision)
                positive = label.strip().lower() in {"positive", "pos", "flagged", "flag", "yes", "1", "true"}
            top.append({"finding": finding, "probability": prob, "decision": label, "positive": positive})
        heatmap = ex.get("heatmap_data_uri")
        out.append({
            "study_key": ex.get("study_key", f"example {i + 1}"),
            "image_data_uri": _check_data_uri(ex.get("image_data_uri"), f"examples[{i}]"),
            "heatmap_data_uri": None if heatmap is None else _check_data_uri(heatmap, f"examples[{i}] heatmap"),
            "gradcam_finding": ex.get("gradcam_finding"),
            "gradcam_note": ex.get("gradcam_note"),
            "top_findings": top,
            "caption": ex.get("caption"),
        })
    return out


def _write_atomic(html: str, out_path: Path) -> Path:
    """Write ``html`` (UTF-8, ``\\n`` line ends) to ``out_path`` atomically."""
    return atomic_write_text(out_path, html)


# --------------------------------------------------------------------------- evaluation


#: Per-class keys the report reads; missing ones are None (baselines and older evaluations lack
#: the intervals and calibration errors).
PER_CLASS_KEYS = (
    "n_positive", "auroc", "auroc_ci_low", "auroc_ci_high", "pr_auc", "f1", "f1_ci_low", "f1_ci_high", "precision",
    "recall", "specificity", "npv", "brier", "ece", "brier_calibrated", "ece_calibrated", "threshold",
    "tp", "fp", "tn", "fn",
)
#: A subgroup macro-AUROC gap (best group minus worst group of one attribute) above this is flagged.
SUBGROUP_GAP_WARNING = 0.05
SUBGROUP_ATTRIBUTES = {"sex": "Sex", "age_band": "Age band", "view": "View position"}
SUBGROUP_METRIC_KEYS = ("macro_auroc", "macro_f1", "micro_f1", "exact_match", "hamming_loss", "mean_brier", "mean_ece")


def per_class_view(rows: Sequence[Mapping[str, Any]], threshold_values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-class rows in FINDINGS order with every :data:`PER_CLASS_KEYS` key (None when absent);
    a missing threshold falls back to ``threshold_values``."""
    out = sorted(({**dict.fromkeys(PER_CLASS_KEYS), **dict(r)} for r in rows), key=lambda r: _finding_order(r["finding"]))
    for r in out:
        if r.get("threshold") is None:
            r["threshold"] = threshold_values.get(r["finding"])
    return out


def _mean_known(values: Sequence[Any]) -> float | None:
    known = [v for v in (_number(x) for x in values) if v is not None]
    return float(np.mean(known)) if known else None


def calibration_view(per_class: Sequence[Mapping[str, Any]], aggregates: Mapping[str, Any],
                     method: str | None) -> dict[str, Any]:
    """Brier and ECE per finding before (raw probabilities) and after the evaluation's probability
    calibration, with a mean row. ``available`` is False when neither ECE nor a calibrated value
    was recorded; ``calibrated`` whether any after-value exists."""
    rows = [{k: r.get(k) for k in ("finding", "brier", "ece", "brier_calibrated", "ece_calibrated")} for r in per_class]
    calibrated = any(_number(r["brier_calibrated"]) is not None or _number(r["ece_calibrated"]) is not None
                     for r in rows)
    mean = {
        "brier": _number(aggregates.get("mean_brier")) if aggregates.get("mean_brier") is not None
        else _mean_known([r["brier"] for r in rows]),
        "ece": _number(aggregates.get("mean_ece")) if aggregates.get("mean_ece") is not None
        else _mean_known([r["ece"] for r in rows]),
        "brier_calibrated": _mean_known([r["brier_calibrated"] for r in rows]),
        "ece_calibrated": _mean_known([r["ece_calibrated"] for r in rows]),
    }
    available = calibrated or any(_number(r["ece"]) is not None for r in rows)
    return {"method": method, "rows": rows, "mean": mean,
            "calibrated": calibrated, "available": available}


def _subgroup_sort_key(attribute: str, group: Any) -> tuple[int, int, str]:
    g = str(group)
    if g == UNKNOWN:
        return (2, 0, g)
    if attribute == "age_band" and g in AGE_BANDS:
        return (0, AGE_BANDS.index(g), g)
    return (1, 0, g)


def subgroup_view(rows: Sequence[Mapping[str, Any]] | None, gap_warning: float = SUBGROUP_GAP_WARNING) -> dict[str, Any]:
    """Subgroup rows grouped by attribute (sex, age band, view first), each attribute with the gap
    between its best and worst group in macro-AUROC and macro-F1
    (:func:`cxrmodel.evaluation.subgroups.subgroup_gaps`) and ``warn`` when the AUROC gap exceeds
    ``gap_warning``. Rows may name the group ``group`` (library) or ``group_name`` (database)."""
    norm = []
    for r in rows or []:
        r = dict(r)
        group = r.get("group", r.get("group_name"))
        norm.append({**dict.fromkeys(SUBGROUP_METRIC_KEYS), **r, "group": group, "attribute": str(r["attribute"])})
    order = list(SUBGROUP_ATTRIBUTES) + sorted({r["attribute"] for r in norm} - set(SUBGROUP_ATTRIBUTES))
    gaps_auroc = subgroup_gaps(norm, "macro_auroc") if norm else {}
    gaps_f1 = subgroup_gaps(norm, "macro_f1") if norm else {}
    attributes = []
    for attribute in order:
        members = sorted((r for r in norm if r["attribute"] == attribute),
                         key=lambda r: _subgroup_sort_key(attribute, r["group"]))
        if not members:
            continue
        scored = [r for r in members if _number(r["macro_auroc"]) is not None]
        best = max(scored, key=lambda r: r["macro_auroc"])["group"] if scored else None
        worst = min(scored, key=lambda r: r["macro_auroc"])["group"] if scored else None
        gap = gaps_auroc.get(attribute)
        attributes.append({
            "attribute": attribute, "label": SUBGROUP_ATTRIBUTES.get(attribute, attribute.replace("_", " ")),
            "rows": members, "n_scored": len(scored), "best": best, "worst": worst,
            "gap_auroc": gap, "gap_f1": gaps_f1.get(attribute),
            "warn": gap is not None and gap > gap_warning,
        })
    return {"attributes": attributes, "warnings": [a for a in attributes if a["warn"]], "gap_warning": gap_warning,
            "any_without_metrics": any(_number(r["macro_auroc"]) is None for r in norm)}


def _embedding_map_figure(ctx: Mapping[str, Any], findings: Sequence[str]) -> tuple[str | None, int]:
    """The map figure and its number of points, from ``embedding_map = {"xy", "rows"}`` (rows
    index ``y_true``) or ``{"xy", "labels"}``; (None, 0) when there is no map."""
    emap = ctx.get("embedding_map")
    if not emap or emap.get("xy") is None:
        return None, 0
    xy = np.asarray(emap["xy"], dtype=float)
    if emap.get("labels") is not None:
        labels, prevalence = np.asarray(emap["labels"]), None
    elif emap.get("rows") is not None and ctx["y_true"] is not None:
        y_true = np.asarray(ctx["y_true"])
        labels, prevalence = y_true[np.asarray(emap["rows"], dtype=np.int64)], y_true.mean(axis=0)
    else:
        return None, 0
    if xy.shape[0] == 0:
        return None, 0
    return figures.embedding_map_figure(xy, labels, findings, prevalence=prevalence), int(xy.shape[0])


def _has_intervals(per_class: Sequence[Mapping[str, Any]], aggregates: Mapping[str, Any]) -> bool:
    keys = ("auroc_ci_low", "auroc_ci_high", "f1_ci_low", "f1_ci_high")
    return any(_number(r.get(k)) is not None for r in per_class for k in keys) or any(
        _number(v) is not None for k, v in aggregates.items() if k.endswith(("_ci_low", "_ci_high")))


def render_evaluation_html(context: Mapping[str, Any]) -> str:
    """The evaluation report as an HTML string (see :func:`render_evaluation_report`)."""
    _require(context, EVALUATION_KEYS, "evaluation report")
    ctx = dict(context)
    thresholds = dict(ctx["thresholds"])
    thresholds.setdefault("method", None)
    thresholds.setdefault("values", {})
    thresholds.setdefault("notes", {})
    threshold_values = dict(thresholds["values"] or {})
    threshold_notes = {
        k: v for k, v in sorted((thresholds["notes"] or {}).items(), key=lambda kv: _finding_order(kv[0])) if v
    }

    examples = _examples_view(ctx.get("examples"))  # validate before the (slow) figures
    per_class = per_class_view(ctx["per_class"], threshold_values)
    aggregates = dict(ctx["aggregates"] or {})
    findings = tuple(ctx.get("findings") or FINDINGS)
    y_true, y_prob = ctx["y_true"], ctx["y_prob"]
    y_cal = ctx.get("y_prob_calibrated")

    figs: dict[str, str | None] = dict.fromkeys(
        ("confusion", "roc", "roc_grid", "pr", "pr_grid", "reliability", "training", "labels", "embedding_map"))
    if per_class:
        figs["confusion"] = figures.confusion_matrices_figure(per_class)
    if y_true is not None and y_prob is not None:
        figs["roc"] = figures.roc_figure(y_true, y_prob, findings)
        figs["roc_grid"] = figures.roc_grid_figure(y_true, y_prob, findings)
        figs["pr"] = figures.pr_figure(y_true, y_prob, findings)
        figs["pr_grid"] = figures.pr_grid_figure(y_true, y_prob, findings)
        figs["reliability"] = figures.reliability_figure(y_true, y_prob, y_cal, findings)
    figs["embedding_map"], n_map = _embedding_map_figure(ctx, findings)
    epochs = list(ctx["epochs"] or [])
    if epochs:
        figs["training"] = figures.training_curves_figure(epochs)
    label_counts = ctx.get("label_counts")
    if label_counts:
        figs["labels"] = figures.label_distribution_figure(
            label_counts, title=ctx.get("label_counts_title") or "Label distribution", xlabel="studies"
        )

    model = {"name": None, "kind": None, "id": None, "sha256": None, "parameter_count": None,
             "created_at": None, **dict(ctx["model"])}
    data = {"source": None, "split": None, "n_studies": None, "n_train": None, "n_val": None,
            "n_test": None, **dict(ctx["data"])}
    source = str(data.get("source") or "").lower()
    method = ctx.get("calibration_method", aggregates.get("calibration_method"))
    rows = _aggregate_rows(aggregates)

    view = {
        "title": ctx["title"],
        "generated_at": ctx["generated_at"],
        "model": model,
        "data": data,
        "is_synthetic": "synth" in source,
        "threshold_method": thresholds["method"],
        "threshold_notes": threshold_notes,
        "aggregates": rows,
        "headline": [r for r in rows if r["key"] in HEADLINE_AGGREGATES],
        "has_intervals": _has_intervals(per_class, aggregates),
        "n_bootstrap": aggregates.get("n_bootstrap", ctx.get("n_bootstrap")),
        "per_class": per_class,
        "calibration": calibration_view(per_class, aggregates, method),
        "subgroups": subgroup_view(ctx.get("subgroups")),
        "comparison": _comparison_view(ctx["comparison"] or []),
        "comparison_columns": COMPARISON_COLUMNS,
        "epochs": epochs,
        "examples": examples,
        "has_heatmaps": any(ex["heatmap_data_uri"] for ex in examples),
        "figs": figs,
        "n_map": n_map,
        "has_predictions": y_true is not None and y_prob is not None,
        "label_counts_title": ctx.get("label_counts_title") or "Label distribution",
        "limitations": ctx.get("limitations"),
    }
    return env.get_template("evaluation.html.j2").render(**view)


def render_evaluation_report(context: Mapping[str, Any], out_path: Path) -> Path:
    """Render the model evaluation report to ``out_path`` (atomic write; folders created).

    ``context`` keys (required unless marked optional):

    - ``title`` (str) and ``generated_at`` (str).
    - ``model``: dict with ``name, kind, id, sha256, parameter_count, created_at``.
    - ``data``: dict with ``source, split, n_studies, n_train, n_val, n_test``. A source
      containing ``"synth"`` adds a synthetic-data warning to the Limitations section.
    - ``thresholds``: dict with ``method`` (str), ``values`` (finding -> float) and
      ``notes`` (finding -> str; empty notes are not shown).
    - ``aggregates``: dict of overall metrics, e.g. ``macro_auroc, micro_auroc, macro_f1,
      micro_f1, macro_precision, micro_precision, macro_recall, micro_recall, exact_match,
      hamming_loss, accuracy, lrap, mean_brier, mean_ece`` (unknown keys are listed too), and
      optionally the intervals ``<metric>_ci_low``/``<metric>_ci_high`` (e.g. ``macro_auroc``,
      ``macro_f1``), ``n_bootstrap`` and ``calibration_method``.
    - ``per_class``: list of dicts with ``finding, n_positive, auroc, pr_auc, f1,
      precision, recall, specificity, npv, brier, threshold, tp, fp, tn, fn`` and optionally
      ``auroc_ci_low, auroc_ci_high, f1_ci_low, f1_ci_high, ece, brier_calibrated,
      ece_calibrated`` (missing or None shows "—"); shown in FINDINGS order. A ``None``
      threshold falls back to ``thresholds["values"]``.
    - ``comparison``: list of dicts with ``name, kind, macro_auroc, macro_f1, micro_f1,
      exact_match, hamming_loss, lrap, mean_brier, parameter_count,
      inference_ms_per_image, is_current (bool), status`` (optional
      ``macro_auroc_ci_low, macro_auroc_ci_high``); the current row is highlighted and the
      best value of each metric column is bold.
    - ``epochs``: list of dicts with ``epoch, train_loss, val_loss, macro_f1,
      mean_auroc`` (values may be ``None``); may be empty (no training-curve section).
    - ``y_true``, ``y_prob``: ``[N, 14]`` arrays (labels and probabilities, columns in
      FINDINGS order) for the ROC figures; both ``None`` skips the ROC section.
    - ``examples`` (optional): list of dicts with ``study_key``, ``image_data_uri`` (a
      ``data:image/...`` URI, see :func:`reports.figures.image_to_data_uri`) and
      ``top_findings``: list of ``(finding, probability, decision)``; ``decision`` is a bool
      or a string such as ``"positive"``.
      Optional per example: ``heatmap_data_uri`` (a Grad-CAM overlay, see
      :func:`reports.figures.gradcam_overlay`), ``gradcam_finding`` (the finding it explains)
      and ``gradcam_note`` (why there is no heat map, e.g. an embedding baseline).
    - ``y_prob_calibrated`` (optional): ``[N, 14]`` calibrated probabilities; the reliability
      curves then show before and after.
    - ``calibration_method`` (optional, else ``aggregates["calibration_method"]``).
    - ``subgroups`` (optional): list of dicts with ``attribute, group`` (or ``group_name``),
      ``n_studies, n_positive_labels, macro_auroc, macro_f1, micro_f1, exact_match,
      hamming_loss, mean_brier, mean_ece``; grouped per attribute with the best-to-worst
      macro-AUROC gap, flagged above :data:`SUBGROUP_GAP_WARNING`.
    - ``embedding_map`` (optional): ``{"xy": [M, 2], "rows": [M]}`` (rows index ``y_true``) or
      ``{"xy", "labels": [M, 14]}``: a scatter coloured by each study's rarest finding.
    - ``label_counts`` (optional): finding -> count, drawn as a bar chart, titled by the
      optional ``label_counts_title``.
    - ``limitations`` (optional): an extra paragraph of text for the Limitations section.
    - ``findings`` (optional): column names for ``y_true``/``y_prob`` (default FINDINGS).

    Sections whose data is missing say "not available" (CIs, calibration, subgroups, map).
    Images: confusion matrices; with ``y_true``/``y_prob``: ROC (all), ROC (grid), PR (all),
    PR (grid), reliability; training curves when ``epochs``; the embedding map when given;
    label distribution when ``label_counts``; one per example plus one per Grad-CAM overlay.
    """
    return _write_atomic(render_evaluation_html(context), Path(out_path))


# --------------------------------------------------------------------------- scoring


def _top_study_view(entry: Sequence[Any]) -> dict[str, Any]:
    """``(study_key, probability)`` or ``(study_key, probability, similar)`` where ``similar`` is a
    list of ``(similar_key, cosine, findings_str)`` (or None)."""
    key, probability, *rest = entry
    similar = rest[0] if rest else None
    return {
        "study_key": key,
        "probability": probability,
        "similar": [{"study_key": s[0], "cosine": s[1], "findings": s[2]} for s in similar or []],
    }


#: Drift rule of the scoring report: a finding's flag rate at least DRIFT_RATIO times, or at most
#: 1 / DRIFT_RATIO times, its training prevalence, with at least DRIFT_MIN_COUNT flagged or
#: expected studies (n_scored x prevalence) so that a handful of studies cannot raise it.
DRIFT_RATIO = 2.0
DRIFT_MIN_COUNT = 5


def drift_status(n_flagged: Any, flag_rate: Any, prevalence: Any, n_scored: Any = None) -> tuple[float | None, bool]:
    """``(ratio, drift)`` of one finding under the rule of :data:`DRIFT_RATIO` and
    :data:`DRIFT_MIN_COUNT`. ``ratio = flag_rate / prevalence`` (None when either is unknown or
    the prevalence is 0). A finding never seen in training (prevalence 0) drifts once it is
    flagged at least DRIFT_MIN_COUNT times. Without ``n_scored`` the count condition uses the
    flags alone."""
    rate, prev, flagged = _number(flag_rate), _number(prevalence), _number(n_flagged)
    scored = _number(n_scored)
    if rate is None or prev is None:
        return None, False
    expected = scored * prev if scored is not None else 0.0
    enough = max(flagged or 0.0, expected) >= DRIFT_MIN_COUNT
    if prev == 0:
        return None, (flagged or 0.0) >= DRIFT_MIN_COUNT
    ratio = rate / prev
    return ratio, enough and (ratio >= DRIFT_RATIO or ratio <= 1.0 / DRIFT_RATIO)


def _failure_reasons(failures: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    counts: dict[str, int] = {}
    for f in failures:
        reason = str(f.get("reason") if f.get("reason") is not None else EMPTY)
        counts[reason] = counts.get(reason, 0) + 1
    return [{"reason": k, "count": v} for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def render_scoring_html(context: Mapping[str, Any]) -> str:
    """The nightly scoring report as an HTML string (see :func:`render_scoring_report`)."""
    _require(context, SCORING_KEYS, "scoring report")
    ctx = dict(context)
    run = {"id": None, "model_name": None, "threshold_set_id": None, "started_at": None, "finished_at": None,
           "n_scored": None, "n_skipped": None, "n_failed": None, "status": None, **dict(ctx["run"])}
    flags = sorted((dict(f) for f in ctx["flags"] or []), key=lambda f: _finding_order(f["finding"]))
    for f in flags:
        f["ratio"], f["drift"] = drift_status(f.get("n_flagged"), f.get("flag_rate"), f.get("training_prevalence"),
                                              run["n_scored"])
    top = ctx["top_studies"] or {}
    top_studies = [
        {"finding": name, "studies": [_top_study_view(entry) for entry in top[name]]}
        for name in sorted(top, key=_finding_order)
    ]
    flag_fig = None
    if flags:
        flag_fig = figures.label_distribution_figure(
            {f["finding"]: f.get("n_flagged") or 0 for f in flags},
            title="Studies flagged per finding", xlabel="flagged studies",
        )
    view = {
        "title": ctx["title"],
        "generated_at": ctx["generated_at"],
        "run": run,
        "refresh": dict(ctx["refresh"]) if ctx.get("refresh") else None,
        "failures": [dict(f) for f in ctx["failures"] or []],
        "failure_reasons": _failure_reasons(ctx["failures"] or []),
        "flags": flags,
        "drifting": [f for f in flags if f["drift"]],
        "drift_ratio": DRIFT_RATIO,
        "drift_min_count": DRIFT_MIN_COUNT,
        "top_studies": top_studies,
        "has_similar": any(s["similar"] for group in top_studies for s in group["studies"]),
        "flag_fig": flag_fig,
    }
    return env.get_template("scoring.html.j2").render(**view)


def render_scoring_report(context: Mapping[str, Any], out_path: Path) -> Path:
    """Render the nightly scoring report to ``out_path`` (atomic write; folders created).

    ``context`` keys:

    - ``title`` (str) and ``generated_at`` (str).
    - ``run``: dict with ``id, model_name, threshold_set_id, started_at, finished_at,
      n_scored, n_skipped, n_failed`` (optional ``status``).
    - ``refresh`` (optional): the latest refresh run before the scoring run, a dict with
      ``id, status, error, started_at``; a failed one is shown as a warning at the top.
    - ``failures``: list of dicts with ``study_key, reason``.
    - ``flags``: list of dicts with ``finding, n_flagged, flag_rate, training_prevalence``
      (rates as fractions). Drift rule (:func:`drift_status`): a flag rate at least
      :data:`DRIFT_RATIO` times or at most 1 / DRIFT_RATIO times the training prevalence, with
      at least :data:`DRIFT_MIN_COUNT` flagged or expected studies; such rows are marked and
      listed in a drift warning above the table. Also drawn as one bar chart.
    - ``top_studies``: dict finding -> list of ``(study_key, probability)``, highest first.
      An optional third element per study lists its most similar labelled studies as
      ``(similar_key, cosine, findings_str)``; they are shown as a compact sub-list.
    """
    return _write_atomic(render_scoring_html(context), Path(out_path))


# --------------------------------------------------------------------------- dataset

__all__ += ["QUARANTINE_DETAIL_LIMIT", "render_dataset_html", "render_dataset_report"]

DATASET_KEYS = (
    "title", "generated_at", "source", "refresh", "split_counts", "label_counts_by_split", "balancing",
    "labels", "ages_by_split", "sex_by_split", "view_by_split", "quarantined",
)
QUARANTINE_DETAIL_LIMIT = 500
SPLIT_ORDER = ("train", "val", "test")
NO_FINDING_LABEL = "No Finding"


def _split_order(name: Any) -> tuple[int, str]:
    s = str(name)
    return (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s)


def _label_order(name: Any) -> tuple[int, int, str]:
    """FINDINGS order, then ``No Finding``, then anything else alphabetically."""
    s = str(name)
    if s in FINDING_INDEX:
        return (0, FINDING_INDEX[s], s)
    return (1 if s == NO_FINDING_LABEL else 2, 0, s)


def _ratio(num: Any, den: Any) -> float | None:
    n, d = _number(num), _number(den)
    return n / d if n is not None and d else None


def _split_view(split_counts: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, value in split_counts.items():
        value = dict(value) if isinstance(value, Mapping) else {"n_studies": value}
        rows.append({"split": str(name), "n_studies": value.get("n_studies"), "n_patients": value.get("n_patients")})
    rows.sort(key=lambda r: _split_order(r["split"]))
    total = sum(int(r["n_studies"] or 0) for r in rows)
    for r in rows:
        r["share"] = _ratio(r["n_studies"], total)
        r["per_patient"] = _ratio(r["n_studies"], r["n_patients"])
    return rows


def _label_table_view(
    by_split: Mapping[str, Mapping[str, Any]], studies_in: Mapping[str, Any]
) -> tuple[list[str], list[dict[str, Any]]]:
    splits = sorted({str(s) for s in by_split}, key=_split_order)
    names: set[str] = set(FINDINGS) | {NO_FINDING_LABEL}
    for counts in by_split.values():
        names |= {str(k) for k in (counts or {})}
    rows = []
    for name in sorted(names, key=_label_order):
        cells = []
        for s in splits:
            counts = {str(k): v for k, v in (by_split.get(s) or {}).items()}
            n = counts.get(name)
            cells.append({"split": s, "count": n, "share": _ratio(n, studies_in.get(s))})
        rows.append({"label": name, "cells": cells, "is_no_finding": name == NO_FINDING_LABEL})
    return splits, rows


def _balancing_view(balancing: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not balancing:
        return None
    before = {str(k): v for k, v in (balancing.get("counts_before") or {}).items()}
    after = {str(k): v for k, v in (balancing.get("counts_after") or {}).items()}
    rows = [
        {"label": name, "before": before.get(name), "after": after.get(name),
         "ratio": _ratio(after.get(name), before.get(name))}
        for name in sorted(set(before) | set(after), key=_label_order)
    ]
    return {
        "preset": balancing.get("preset"),
        "seed": balancing.get("seed"),
        "n_rows_before": balancing.get("n_rows_before"),
        "n_rows_after": balancing.get("n_rows_after"),
        "rows": rows,
        "fig_before": figures.label_distribution_figure(
            before, title="Before balancing (training split)", xlabel="studies") if before else None,
        "fig_after": figures.label_distribution_figure(
            after, title="After balancing (training split)", xlabel="rows, copies included") if after else None,
    }


def _proportion_view(table: Mapping[str, Mapping[str, Any]] | None) -> tuple[list[str], list[dict[str, Any]]]:
    table = table or {}
    categories: list[str] = []
    for row in table.values():
        for c in row or {}:
            if str(c) not in categories:
                categories.append(str(c))
    rows = []
    for s in sorted(table, key=_split_order):
        values = {str(k): v for k, v in (table[s] or {}).items()}
        rows.append({"split": str(s), "values": [values.get(c) for c in categories]})
    return categories, rows


def _age_stats(ages_by_split: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    out = []
    for s in sorted(ages_by_split or {}, key=_split_order):
        arr = np.asarray(ages_by_split[s] if ages_by_split[s] is not None else [], dtype=float).ravel()
        known = arr[np.isfinite(arr)]
        out.append({
            "split": str(s), "n": int(known.size), "n_missing": int(arr.size - known.size),
            "median": float(np.median(known)) if known.size else None,
            "min": float(known.min()) if known.size else None,
            "max": float(known.max()) if known.size else None,
        })
    return out


def _quarantine_view(rows: Sequence[Mapping[str, Any]] | None, limit: int) -> dict[str, Any]:
    rows = [dict(r) for r in rows or []]
    counts: dict[str, int] = {}
    for r in rows:
        reason = str(r.get("reason") if r.get("reason") is not None else EMPTY)
        counts[reason] = counts.get(reason, 0) + 1
    reasons = [{"reason": k, "count": v, "share": v / len(rows)}
               for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    shown = rows[: max(0, int(limit))]
    return {
        "n": len(rows),
        "reasons": reasons,
        "rows": shown,
        "omitted": len(rows) - len(shown),
        "limit": int(limit),
        "has_source": any(r.get("source") is not None for r in shown),
        "has_run": any(r.get("refresh_run_id") is not None for r in shown),
        "has_created": any(r.get("created_at") is not None for r in shown),
    }


def render_dataset_html(context: Mapping[str, Any]) -> str:
    """The dataset report as an HTML string (see :func:`render_dataset_report`)."""
    _require(context, DATASET_KEYS, "dataset report")
    ctx = dict(context)
    splits = _split_view(ctx["split_counts"] or {})
    studies_in = {r["split"]: r["n_studies"] for r in splits}
    label_splits, label_rows = _label_table_view(ctx["label_counts_by_split"] or {}, studies_in)
    quarantine = _quarantine_view(ctx["quarantined"], ctx.get("quarantine_limit") or QUARANTINE_DETAIL_LIMIT)
    sex_categories, sex_rows = _proportion_view(ctx["sex_by_split"])
    view_categories, view_rows = _proportion_view(ctx["view_by_split"])
    age_stats = _age_stats(ctx["ages_by_split"])

    figs: dict[str, str | None] = {"cooccurrence": None, "ages": None, "sex": None, "view": None}
    labels = ctx["labels"]
    if labels is not None and np.asarray(labels).size:
        figs["cooccurrence"] = figures.cooccurrence_figure(labels, tuple(ctx.get("findings") or FINDINGS))
    if any(a["n"] for a in age_stats):
        figs["ages"] = figures.age_histogram_figure(ctx["ages_by_split"])
    if sex_rows and sex_categories:
        figs["sex"] = figures.proportions_figure(ctx["sex_by_split"], "Sex by split")
    if view_rows and view_categories:
        figs["view"] = figures.proportions_figure(ctx["view_by_split"], "View position by split")

    refresh = None
    if ctx["refresh"]:
        refresh = {"id": None, "n_rows": None, "n_added": None, "n_updated": None, "n_unchanged": None,
                   "n_quarantined": None, "status": None, "started_at": None, "finished_at": None,
                   "source": None, "location": None, **dict(ctx["refresh"])}
    n_studies = sum(int(r["n_studies"] or 0) for r in splits)
    n_patients = ctx.get("n_patients")
    if n_patients is None and splits and all(r["n_patients"] is not None for r in splits):
        n_patients = sum(int(r["n_patients"]) for r in splits)
    source = ctx["source"]
    view = {
        "title": ctx["title"],
        "generated_at": ctx["generated_at"],
        "source": source,
        "is_synthetic": "synth" in str(source or "").lower(),
        "refresh": refresh,
        "splits": splits,
        "n_studies": n_studies,
        "n_patients": n_patients,
        "label_splits": label_splits,
        "label_rows": label_rows,
        "balancing": _balancing_view(ctx["balancing"]),
        "n_labelled_rows": None if labels is None else int(np.asarray(labels).shape[0]),
        "age_stats": age_stats,
        "sex_categories": sex_categories,
        "sex_rows": sex_rows,
        "view_categories": view_categories,
        "view_rows": view_rows,
        "quarantine": quarantine,
        "figs": figs,
    }
    return env.get_template("dataset.html.j2").render(**view)


def render_dataset_report(context: Mapping[str, Any], out_path: Path) -> Path:
    """Render the dataset report to ``out_path`` (atomic write; folders created).

    ``context`` keys (all required; those marked "or None" may be ``None``):

    - ``title`` (str), ``generated_at`` (str) and ``source`` (str: the data source, e.g.
      ``"nih-local"``; one containing ``"synth"`` adds a synthetic-data badge).
    - ``refresh``: dict with ``id, n_rows, n_added, n_updated, n_unchanged, n_quarantined``
      (optional ``status, started_at, finished_at, source, location``), or None.
    - ``split_counts``: split -> dict with ``n_studies`` and ``n_patients`` (a bare int is
      read as ``n_studies``). Splits are shown train, val, test, then others by name.
    - ``label_counts_by_split``: split -> {finding or ``"No Finding"``: number of studies};
      percentages are of the split's ``n_studies``.
    - ``balancing``: dict with ``preset`` (str), ``counts_before`` and ``counts_after``
      (label -> count; see :func:`cxrmodel.data.balancing.apply_balancing`), optional ``seed``,
      ``n_rows_before`` and ``n_rows_after``; or None (no training split). Shown as a table
      with both columns and the after/before ratio, plus a bar chart of each.
    - ``labels``: ``[N, 14]`` 0/1 array (columns in FINDINGS, or the optional ``findings``
      key's order) for the co-occurrence heatmap; None or empty skips the figure.
    - ``ages_by_split``: split -> 1-D array of ages (NaN/None for unknown).
    - ``sex_by_split`` and ``view_by_split``: split -> {category: fraction}, e.g.
      ``{"train": {"F": 0.43, "M": 0.57}}``.
    - ``quarantined``: list of dicts with ``row_key, row_number, reason`` (optional
      ``source, refresh_run_id, created_at``), in the order to list them. A count per
      reason is shown first; the detailed list stops after ``quarantine_limit`` (optional,
      default :data:`QUARANTINE_DETAIL_LIMIT` = 500) rows and says how many were left out.
    - ``n_patients`` (optional): distinct patients overall (default: the per-split sum).

    Images (all embedded PNG data URIs): balancing before/after bar charts, co-occurrence
    heatmap, age histogram, sex and view-position bars (each only when it has data).
    """
    return _write_atomic(render_dataset_html(context), Path(out_path))
