"""reports: self-contained HTML reports (Jinja2 + matplotlib) from typed contexts.

Nothing here imports the database layer or Prefect: callers build an
:class:`EvaluationContext`, :class:`ScoringContext` or :class:`DatasetContext` (plain values and
numpy arrays, checked when built) and render it. Research tool only, not a medical device;
every report says so.
"""

from reports.bundle import build_export_bundle, model_card_markdown
from reports.contexts import (
    QUARANTINE_DETAIL_LIMIT,
    DatasetContext,
    EvaluationContext,
    ScoringContext,
)
from reports.dataset import render_dataset_html, render_dataset_report
from reports.environment import DISCLAIMER, fmt, fmt_ci, pct
from reports.evaluation import render_evaluation_html, render_evaluation_report
from reports.figures import (
    confusion_matrices_figure,
    gradcam_overlay,
    image_to_data_uri,
    label_distribution_figure,
    png_to_data_uri,
    roc_figure,
    roc_grid_figure,
    training_curves_figure,
)
from reports.scoring import render_scoring_html, render_scoring_report

__all__ = [
    "DISCLAIMER",
    "QUARANTINE_DETAIL_LIMIT",
    "DatasetContext",
    "EvaluationContext",
    "ScoringContext",
    "build_export_bundle",
    "confusion_matrices_figure",
    "fmt",
    "fmt_ci",
    "gradcam_overlay",
    "image_to_data_uri",
    "label_distribution_figure",
    "model_card_markdown",
    "pct",
    "png_to_data_uri",
    "render_dataset_html",
    "render_dataset_report",
    "render_evaluation_html",
    "render_evaluation_report",
    "render_scoring_html",
    "render_scoring_report",
    "roc_figure",
    "roc_grid_figure",
    "training_curves_figure",
]
