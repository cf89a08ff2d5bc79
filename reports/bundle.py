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

The input is the evaluation report's :class:`~reports.contexts.EvaluationContext`; nothing
here imports the database or Prefect. The zip is written atomically.
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
from reports.common import finding_order
from reports.contexts import ClassMetrics, EvaluationContext, SubgroupMetrics, ThresholdInfo
from reports.environment import DISCLAIMER, finite_or_none, render_template
from reports.evaluation import evaluation_summary, per_class_view
from reports.subgroups import SUBGROUP_METRIC_KEYS, subgroup_view

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
    "finding",
    "n_positive",
    "auroc",
    "auroc_ci_low",
    "auroc_ci_high",
    "pr_auc",
    "f1",
    "f1_ci_low",
    "f1_ci_high",
    "precision",
    "recall",
    "specificity",
    "npv",
    "brier",
    "ece",
    "brier_calibrated",
    "ece_calibrated",
    "threshold",
    "tp",
    "fp",
    "tn",
    "fn",
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


def per_class_csv(
    per_class: Sequence[ClassMetrics | Mapping[str, Any]], threshold_values: Mapping[str, Any] | None = None
) -> str:
    """``per_class_metrics.csv``: FINDINGS order, :data:`PER_CLASS_CSV_COLUMNS`."""
    return _csv(per_class_view(per_class, threshold_values or {}), PER_CLASS_CSV_COLUMNS)


def subgroup_csv(rows: Sequence[SubgroupMetrics | Mapping[str, Any]]) -> str:
    """``subgroup_metrics.csv``: attributes and groups in report order, :data:`SUBGROUP_CSV_COLUMNS`."""
    ordered = [r for a in subgroup_view(rows)["attributes"] for r in a["rows"]]
    return _csv(ordered, SUBGROUP_CSV_COLUMNS)


def thresholds_json(thresholds: ThresholdInfo) -> str:
    """``thresholds.json`` of the report's thresholds (method, values, non-empty notes), FINDINGS order."""
    values = thresholds.values
    notes = {k: v for k, v in thresholds.notes.items() if v}
    payload = {
        "method": thresholds.method,
        "thresholds": {k: float(values[k]) for k in sorted(values, key=finding_order)},
        "notes": {k: notes[k] for k in sorted(notes, key=finding_order)},
    }
    return json.dumps(payload, indent=2) + "\n"


def _failure_modes(
    per_class: Sequence[Mapping[str, Any]], subgroups: Mapping[str, Any], calibration: Mapping[str, Any], is_synthetic: bool
) -> list[str]:
    """Data-driven known failure modes (the template adds the ones every CXR model has)."""
    modes = []
    low = [r for r in per_class if finite_or_none(r["auroc"]) is not None and r["auroc"] < LOW_AUROC]
    if low:
        modes.append(
            f"Weak discrimination (AUROC below {LOW_AUROC:.2f}) for "
            + ", ".join(f"{r['finding']} ({r['auroc']:.3f})" for r in low)
            + "."
        )
    few = [r for r in per_class if finite_or_none(r["n_positive"]) is not None and r["n_positive"] < FEW_POSITIVES]
    if few:
        modes.append(
            f"Fewer than {FEW_POSITIVES} positive test studies for "
            + ", ".join(f"{r['finding']} ({int(r['n_positive'])})" for r in few)
            + ": their metrics are unreliable."
        )
    wide = [
        r
        for r in per_class
        if finite_or_none(r["auroc_ci_low"]) is not None
        and finite_or_none(r["auroc_ci_high"]) is not None
        and r["auroc_ci_high"] - r["auroc_ci_low"] > WIDE_INTERVAL
    ]
    if wide:
        modes.append(
            f"Wide AUROC intervals (wider than {WIDE_INTERVAL:.2f}) for "
            + ", ".join(f"{r['finding']} ({r['auroc_ci_low']:.3f}–{r['auroc_ci_high']:.3f})" for r in wide)
            + "."
        )
    key = "ece_calibrated" if calibration["calibrated"] else "ece"
    poor = [r for r in calibration["rows"] if finite_or_none(r[key]) is not None and r[key] > HIGH_ECE]
    if poor:
        modes.append(
            f"Poorly calibrated probabilities (ECE above {HIGH_ECE:.2f}"
            f"{' after calibration' if calibration['calibrated'] else ''}) for "
            + ", ".join(f"{r['finding']} ({r[key]:.3f})" for r in poor)
            + ": read the probabilities as scores, not as risks."
        )
    for a in subgroups["warnings"]:
        modes.append(
            f"Performance differs by {a['label'].lower()}: macro-AUROC {a['gap_auroc']:.3f} lower for "
            f"{a['worst']} than for {a['best']}."
        )
    if is_synthetic:
        modes.append("Trained and evaluated on synthetic phantoms: no evidence at all about real radiographs.")
    return modes


def model_card_markdown(context: EvaluationContext) -> str:
    """``model_card.md`` of an evaluation (``templates/model_card.md.j2``)."""
    summary = evaluation_summary(context)
    view = {
        **summary,
        "evaluation_id": context.evaluation_id,
        "failure_modes": _failure_modes(
            summary["per_class"], summary["subgroups"], summary["calibration"], summary["is_synthetic"]
        ),
        "members": list(BUNDLE_MEMBERS) + (["subgroup_metrics.csv"] if summary["subgroups"]["attributes"] else []),
        "findings": FINDINGS,
        "DISCLAIMER": DISCLAIMER,
    }
    return render_template("model_card.md.j2", view)


def _write_zip(members: Mapping[str, bytes]):
    def write(fh) -> None:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)

    return write


def build_export_bundle(
    context: EvaluationContext, report_path: str | os.PathLike[str], out_path: str | os.PathLike[str]
) -> Path:
    """Write the export bundle zip of one evaluation to ``out_path`` (atomic; folders created;
    a failure keeps the previous zip).

    ``context`` is the evaluation report's context; ``report_path`` the rendered HTML report,
    stored as ``evaluation_report.html``. Returns ``out_path``.
    """
    if not isinstance(context, EvaluationContext):
        raise TypeError(f"expected an EvaluationContext, got {type(context).__name__}")
    members = {
        REPORT_MEMBER: Path(report_path).read_bytes(),
        "per_class_metrics.csv": per_class_csv(context.per_class, context.thresholds.values).encode(),
        "thresholds.json": thresholds_json(context.thresholds).encode(),
        "model_card.md": model_card_markdown(context).encode(),
    }
    if context.subgroups:
        members["subgroup_metrics.csv"] = subgroup_csv(context.subgroups).encode()
    return atomic_write(Path(out_path), _write_zip(members))
