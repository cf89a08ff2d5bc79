"""reports: self-contained HTML reports (Jinja2 + matplotlib) from plain data.

Nothing here imports the database layer or Prefect: callers pass dicts, lists and numpy
arrays. Research tool only, not a medical device; every report says so.
"""

from reports.figures import (
    confusion_matrices_figure,
    image_to_data_uri,
    label_distribution_figure,
    png_to_data_uri,
    roc_figure,
    roc_grid_figure,
    training_curves_figure,
)
from reports.render import (
    DISCLAIMER,
    fmt,
    pct,
    render_evaluation_html,
    render_evaluation_report,
    render_scoring_html,
    render_scoring_report,
)

__all__ = [
    "DISCLAIMER",
    "confusion_matrices_figure",
    "fmt",
    "image_to_data_uri",
    "label_distribution_figure",
    "pct",
    "png_to_data_uri",
    "render_evaluation_html",
    "render_evaluation_report",
    "render_scoring_html",
    "render_scoring_report",
    "roc_figure",
    "roc_grid_figure",
    "training_curves_figure",
]
