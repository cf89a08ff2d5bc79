"""Matplotlib figures for the HTML reports, each returned as a ``data:image/png;base64,...`` URI.

One module per family: :mod:`~reports.figures.curves` (ROC, precision-recall, reliability),
:mod:`~reports.figures.matrices` (confusion), :mod:`~reports.figures.training` (training
curves), :mod:`~reports.figures.images` (study images, Grad-CAM overlays),
:mod:`~reports.figures.distributions` (labels, co-occurrence, ages, proportions) and
:mod:`~reports.figures.embedding` (the embedding map), all drawn on
:mod:`~reports.figures.canvas`. Inputs are plain Python/numpy data; curves are the ones
:mod:`cxrmodel.evaluation` computes.
"""

from reports.figures.canvas import DPI, PNG_PREFIX, png_to_data_uri
from reports.figures.curves import pr_figure, pr_grid_figure, reliability_figure, roc_figure, roc_grid_figure
from reports.figures.distributions import (
    age_histogram_figure,
    cooccurrence_figure,
    label_distribution_figure,
    proportions_figure,
)
from reports.figures.embedding import NO_FINDING_COLOUR, embedding_map_figure, map_colour_labels
from reports.figures.images import gradcam_overlay, image_to_data_uri
from reports.figures.matrices import confusion_matrices_figure
from reports.figures.training import training_curves_figure

__all__ = [
    "DPI",
    "NO_FINDING_COLOUR",
    "PNG_PREFIX",
    "age_histogram_figure",
    "confusion_matrices_figure",
    "cooccurrence_figure",
    "embedding_map_figure",
    "gradcam_overlay",
    "image_to_data_uri",
    "label_distribution_figure",
    "map_colour_labels",
    "png_to_data_uri",
    "pr_figure",
    "pr_grid_figure",
    "proportions_figure",
    "reliability_figure",
    "roc_figure",
    "roc_grid_figure",
    "training_curves_figure",
]
