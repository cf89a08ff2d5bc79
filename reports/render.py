"""Render self-contained HTML reports (evaluation, nightly scoring) with Jinja2.

The inputs are plain dicts, lists and numpy arrays; nothing here imports the database
layer or Prefect. Every figure is embedded as a PNG data URI and all CSS is inline, so a
report is a single file that opens offline and prints cleanly.

Research tool only: every report carries the :data:`DISCLAIMER` banner.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from cxrmodel.findings import FINDING_INDEX, FINDINGS
from reports import figures

__all__ = [
    "DISCLAIMER",
    "TEMPLATES_DIR",
    "env",
    "fmt",
    "pct",
    "render_evaluation_html",
    "render_evaluation_report",
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
)
HEADLINE_AGGREGATES = ("macro_auroc", "macro_f1", "micro_f1", "exact_match")

# comparison columns: (key, label, higher_is_better or None when not ranked)
COMPARISON_COLUMNS: tuple[tuple[str, str, bool | None], ...] = (
    ("macro_auroc", "Macro AUROC", True),
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
    known = {k for k, _, _ in AGGREGATE_LABELS}
    rows = [
        {"key": k, "label": label, "value": aggregates[k], "higher_is_better": hib}
        for k, label, hib in AGGREGATE_LABELS
        if k in aggregates
    ]
    rows += [
        {"key": k, "label": k.replace("_", " "), "value": v, "higher_is_better": None}
        for k, v in aggregates.items()
        if k not in known
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
        raise ValueError(f"{where}: image_data_uri must be a 'data:image/...' URI, got {str(uri)[:40]!r}")
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
        out.append({
            "study_key": ex.get("study_key", f"example {i + 1}"),
            "image_data_uri": _check_data_uri(ex.get("image_data_uri"), f"examples[{i}]"),
            "top_findings": top,
            "caption": ex.get("caption"),
        })
    return out


def _write_atomic(html: str, out_path: Path) -> Path:
    """Write ``html`` to ``out_path`` via a temp file in the same folder and ``os.replace``."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(html)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return out_path


# --------------------------------------------------------------------------- evaluation


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
    per_class = sorted((dict(r) for r in ctx["per_class"]), key=lambda r: _finding_order(r["finding"]))
    for r in per_class:
        if r.get("threshold") is None:
            r["threshold"] = threshold_values.get(r["finding"])

    figs: dict[str, str | None] = {"confusion": None, "roc": None, "roc_grid": None, "training": None,
                                   "labels": None}
    if per_class:
        figs["confusion"] = figures.confusion_matrices_figure(per_class)
    if ctx["y_true"] is not None and ctx["y_prob"] is not None:
        findings = tuple(ctx.get("findings") or FINDINGS)
        figs["roc"] = figures.roc_figure(ctx["y_true"], ctx["y_prob"], findings)
        figs["roc_grid"] = figures.roc_grid_figure(ctx["y_true"], ctx["y_prob"], findings)
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

    view = {
        "title": ctx["title"],
        "generated_at": ctx["generated_at"],
        "model": model,
        "data": data,
        "is_synthetic": "synth" in source,
        "threshold_method": thresholds["method"],
        "threshold_notes": threshold_notes,
        "aggregates": _aggregate_rows(ctx["aggregates"] or {}),
        "headline": [r for r in _aggregate_rows(ctx["aggregates"] or {}) if r["key"] in HEADLINE_AGGREGATES],
        "per_class": per_class,
        "comparison": _comparison_view(ctx["comparison"] or []),
        "comparison_columns": COMPARISON_COLUMNS,
        "epochs": epochs,
        "examples": examples,
        "figs": figs,
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
      hamming_loss, accuracy, lrap, mean_brier`` (unknown keys are listed too).
    - ``per_class``: list of dicts with ``finding, n_positive, auroc, pr_auc, f1,
      precision, recall, specificity, npv, brier, threshold, tp, fp, tn, fn``; shown in
      FINDINGS order. A ``None`` threshold falls back to ``thresholds["values"]``.
    - ``comparison``: list of dicts with ``name, kind, macro_auroc, macro_f1, micro_f1,
      exact_match, hamming_loss, lrap, mean_brier, parameter_count,
      inference_ms_per_image, is_current (bool), status``; the current row is
      highlighted and the best value of each metric column is bold.
    - ``epochs``: list of dicts with ``epoch, train_loss, val_loss, macro_f1,
      mean_auroc`` (values may be ``None``); may be empty (no training-curve section).
    - ``y_true``, ``y_prob``: ``[N, 14]`` arrays (labels and probabilities, columns in
      FINDINGS order) for the ROC figures; both ``None`` skips the ROC section.
    - ``examples`` (optional): list of dicts with ``study_key``, ``image_data_uri`` (a
      ``data:image/...`` URI, see :func:`reports.figures.image_to_data_uri`) and
      ``top_findings``: list of ``(finding, probability, decision)``; ``decision`` is a bool
      or a string such as ``"positive"``.
    - ``label_counts`` (optional): finding -> count, drawn as a bar chart, titled by the
      optional ``label_counts_title``.
    - ``limitations`` (optional): an extra paragraph of text for the Limitations section.
    - ``findings`` (optional): column names for ``y_true``/``y_prob`` (default FINDINGS).

    Images: confusion matrices, ROC (all), ROC (grid), training curves when ``epochs``,
    label distribution when ``label_counts``, and one per example.
    """
    return _write_atomic(render_evaluation_html(context), Path(out_path))


# --------------------------------------------------------------------------- scoring


def render_scoring_html(context: Mapping[str, Any]) -> str:
    """The nightly scoring report as an HTML string (see :func:`render_scoring_report`)."""
    _require(context, SCORING_KEYS, "scoring report")
    ctx = dict(context)
    run = {"id": None, "model_name": None, "threshold_set_id": None, "started_at": None, "finished_at": None,
           "n_scored": None, "n_skipped": None, "n_failed": None, "status": None, **dict(ctx["run"])}
    flags = sorted((dict(f) for f in ctx["flags"] or []), key=lambda f: _finding_order(f["finding"]))
    for f in flags:
        rate, prev = _number(f.get("flag_rate")), _number(f.get("training_prevalence"))
        f["ratio"] = rate / prev if rate is not None and prev else None
        f["drift"] = f["ratio"] is not None and (f["ratio"] >= 2.0 or f["ratio"] <= 0.5)
    top = ctx["top_studies"] or {}
    top_studies = [
        {"finding": name, "studies": [{"study_key": k, "probability": p} for k, p in top[name]]}
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
        "failures": [dict(f) for f in ctx["failures"] or []],
        "flags": flags,
        "top_studies": top_studies,
        "flag_fig": flag_fig,
    }
    return env.get_template("scoring.html.j2").render(**view)


def render_scoring_report(context: Mapping[str, Any], out_path: Path) -> Path:
    """Render the nightly scoring report to ``out_path`` (atomic write; folders created).

    ``context`` keys:

    - ``title`` (str) and ``generated_at`` (str).
    - ``run``: dict with ``id, model_name, threshold_set_id, started_at, finished_at,
      n_scored, n_skipped, n_failed`` (optional ``status``).
    - ``failures``: list of dicts with ``study_key, reason``.
    - ``flags``: list of dicts with ``finding, n_flagged, flag_rate, training_prevalence``
      (rates as fractions). Findings whose flag rate is at least 2x or at most 0.5x the
      training prevalence are marked for review. Also drawn as one bar chart.
    - ``top_studies``: dict finding -> list of ``(study_key, probability)``, highest first.
    """
    return _write_atomic(render_scoring_html(context), Path(out_path))
