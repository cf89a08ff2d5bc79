"""The export bundle of one evaluation: a single zip with everything a reader needs offline.

Members:

- ``evaluation_report.html``: the self-contained HTML report (as rendered);
- ``per_class_metrics.csv``: one row per finding, the columns of :data:`PER_CLASS_CSV_COLUMNS`
  (empty cell for a missing value; floats written exactly, ``repr`` precision);
- ``thresholds.json``: ``{"method", "thresholds": {finding: value}, "notes"}`` (the format of
  :func:`cxrmodel.evaluation.thresholds.save_thresholds_json`, readable by ``load_thresholds_json``);
- ``model_card.md``: intended use and its limits, training data and split, metrics with their
  confidence intervals, calibration, subgroup gaps and known failure modes
  (``templates/model_card.md.j2``);
- ``subgroup_metrics.csv`` when the evaluation has subgroup rows.

Inputs are the same plain context dict as :func:`reports.render.render_evaluation_report`;
nothing here imports the database or Prefect. The zip is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrmodel.findings import FINDINGS
from cxrmodel.io import atomic_write
from reports.render import (
    DISCLAIMER,
    SUBGROUP_METRIC_KEYS,
    _aggregate_rows,
    _finding_order,
    _has_intervals,
    _number,
    calibration_view,
    env,
    per_class_view,
    subgroup_view,
)

__all__ = [
    "BUNDLE_MEMBERS",
    "PER_CLASS_CSV_COLUMNS",
    "SUBGROUP_CSV_COLUMNS",
    "build_export_bundle",
    "model_card_markdown",
    "per_class_csv",
    "subgroup_csv",
    "thresholds_json",
]

REPORT_MEMBER = "evaluation_report.html"
BUNDLE_MEMBERS = (REPORT_MEMBER, "per_class_metrics.csv", "thresholds.json", "model_card.md")
PER_CLASS_CSV_COLUMNS = (
    "finding", "n_positive", "auroc", "auroc_ci_low", "auroc_ci_high", "pr_auc", "f1", "f1_ci_low", "f1_ci_high",
    "precision", "recall", "specificity", "npv", "brier", "ece", "brier_calibrated", "ece_calibrated", "threshold",
    "tp", "fp", "tn", "fn",
)
SUBGROUP_CSV_COLUMNS = ("attribute", "group", "n_studies", "n_positive_labels", *SUBGROUP_METRIC_KEYS)

#: Known-failure-mode triggers of the model card.
LOW_AUROC = 0.70
FEW_POSITIVES = 30
WIDE_INTERVAL = 0.15
HIGH_ECE = 0.10


def _cell(value: Any) -> str:
    """A CSV cell: empty for None/NaN/inf, integers as integers, reals at ``repr`` precision
    (they read back exactly), anything else as ``str``."""
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        return repr(v) if math.isfinite(v) else ""
    return str(value)


def _csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([_cell(r.get(c)) for c in columns])
    return buf.getvalue()


def per_class_csv(per_class: Sequence[Mapping[str, Any]], threshold_values: Mapping[str, Any] | None = None) -> str:
    """``per_class_metrics.csv``: FINDINGS order, :data:`PER_CLASS_CSV_COLUMNS`."""
    return _csv(per_class_view(per_class, threshold_values or {}), PER_CLASS_CSV_COLUMNS)


def subgroup_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """``subgroup_metrics.csv``: attributes and groups in report order, :data:`SUBGROUP_CSV_COLUMNS`."""
    ordered = [r for a in subgroup_view(rows)["attributes"] for r in a["rows"]]
    return _csv(ordered, SUBGROUP_CSV_COLUMNS)


def thresholds_json(thresholds: Mapping[str, Any]) -> str:
    """``thresholds.json`` from the report's ``thresholds`` dict (``method, values, notes``)."""
    values = dict(thresholds.get("values") or {})
    notes = {k: v for k, v in (thresholds.get("notes") or {}).items() if v}
    payload = {
        "method": thresholds.get("method"),
        "thresholds": {k: float(values[k]) for k in sorted(values, key=_finding_order)},
        "notes": {k: notes[k] for k in sorted(notes, key=_finding_order)},
    }
    return json.dumps(payload, indent=2) + "\n"


def _failure_modes(per_class: Sequence[Mapping[str, Any]], subgroups: Mapping[str, Any],
                   calibration: Mapping[str, Any], is_synthetic: bool) -> list[str]:
    """Data-driven known failure modes (the template adds the ones every CXR model has)."""
    modes = []
    low = [r for r in per_class if _number(r["auroc"]) is not None and r["auroc"] < LOW_AUROC]
    if low:
        modes.append(f"Weak discrimination (AUROC below {LOW_AUROC:.2f}) for "
                     + ", ".join(f"{r['finding']} ({r['auroc']:.3f})" for r in low) + ".")
    few = [r for r in per_class if _number(r["n_positive"]) is not None and r["n_positive"] < FEW_POSITIVES]
    if few:
        modes.append(f"Fewer than {FEW_POSITIVES} positive test studies for "
                     + ", ".join(f"{r['finding']} ({int(r['n_positive'])})" for r in few)
                     + ": their metrics are unreliable.")
    wide = [r for r in per_class if _number(r["auroc_ci_low"]) is not None and _number(r["auroc_ci_high"]) is not None
            and r["auroc_ci_high"] - r["auroc_ci_low"] > WIDE_INTERVAL]
    if wide:
        modes.append(f"Wide AUROC intervals (wider than {WIDE_INTERVAL:.2f}) for "
                     + ", ".join(f"{r['finding']} ({r['auroc_ci_low']:.3f}–{r['auroc_ci_high']:.3f})" for r in wide)
                     + ".")
    key = "ece_calibrated" if calibration["calibrated"] else "ece"
    poor = [r for r in calibration["rows"] if _number(r[key]) is not None and r[key] > HIGH_ECE]
    if poor:
        modes.append(f"Poorly calibrated probabilities (ECE above {HIGH_ECE:.2f}"
                     f"{' after calibration' if calibration['calibrated'] else ''}) for "
                     + ", ".join(f"{r['finding']} ({r[key]:.3f})" for r in poor)
                     + ": read the probabilities as scores, not as risks.")
    for a in subgroups["warnings"]:
        modes.append(f"Performance differs by {a['label'].lower()}: macro-AUROC {a['gap_auroc']:.3f} lower for "
                     f"{a['worst']} than for {a['best']}.")
    if is_synthetic:
        modes.append("Trained and evaluated on synthetic phantoms: no evidence at all about real radiographs.")
    return modes


def model_card_markdown(context: Mapping[str, Any]) -> str:
    """``model_card.md`` for an evaluation context (see :func:`reports.render.render_evaluation_report`)."""
    thresholds = dict(context.get("thresholds") or {})
    per_class = per_class_view(context.get("per_class") or [], dict(thresholds.get("values") or {}))
    aggregates = dict(context.get("aggregates") or {})
    method = context.get("calibration_method", aggregates.get("calibration_method"))
    calibration = calibration_view(per_class, aggregates, method)
    subgroups = subgroup_view(context.get("subgroups"))
    model = {"name": None, "kind": None, "id": None, "sha256": None, "parameter_count": None, "created_at": None,
             **dict(context.get("model") or {})}
    data = {"source": None, "split": None, "n_studies": None, "n_train": None, "n_val": None, "n_test": None,
            **dict(context.get("data") or {})}
    is_synthetic = "synth" in str(data.get("source") or "").lower()
    view = {
        "title": context.get("title"),
        "generated_at": context.get("generated_at"),
        "evaluation_id": context.get("evaluation_id"),
        "model": model,
        "data": data,
        "is_synthetic": is_synthetic,
        "threshold_method": thresholds.get("method"),
        "aggregates": _aggregate_rows(aggregates),
        "n_bootstrap": aggregates.get("n_bootstrap", context.get("n_bootstrap")),
        "has_intervals": _has_intervals(per_class, aggregates),
        "per_class": per_class,
        "calibration": calibration,
        "subgroups": subgroups,
        "failure_modes": _failure_modes(per_class, subgroups, calibration, is_synthetic),
        "members": list(BUNDLE_MEMBERS) + (["subgroup_metrics.csv"] if subgroups["attributes"] else []),
        "findings": FINDINGS,
        "DISCLAIMER": DISCLAIMER,
    }
    return env.get_template("model_card.md.j2").render(**view)


def _write_zip(members: Mapping[str, bytes]):
    def write(fh) -> None:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)

    return write


def build_export_bundle(context: Mapping[str, Any], report_path: str | os.PathLike[str],
                        out_path: str | os.PathLike[str]) -> Path:
    """Write the export bundle zip of one evaluation to ``out_path`` (atomic; folders created).

    ``context`` is the evaluation report's context (optionally with ``evaluation_id``);
    ``report_path`` the rendered HTML report, stored as ``evaluation_report.html``.
    Returns ``out_path``.
    """
    thresholds = dict(context.get("thresholds") or {})
    members = {
        REPORT_MEMBER: Path(report_path).read_bytes(),
        "per_class_metrics.csv": per_class_csv(context.get("per_class") or [], thresholds.get("values")).encode(),
        "thresholds.json": thresholds_json(thresholds).encode(),
        "model_card.md": model_card_markdown(context).encode(),
    }
    if context.get("subgroups"):
        members["subgroup_metrics.csv"] = subgroup_csv(context["subgroups"]).encode()
    return atomic_write(Path(out_path), _write_zip(members))
