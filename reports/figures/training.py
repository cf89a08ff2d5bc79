"""Training curves of the evaluation report: losses and validation metrics per epoch."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from reports.figures.canvas import ACCENT, ACCENT_2, finish, new_figure, no_data, styled

__all__ = ["training_curves_figure"]


def _series(epochs: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """The finite ``(epoch, value)`` points of ``key``; an epoch without a number is its position."""
    xs, ys = [], []
    for i, e in enumerate(epochs):
        v = e.get(key)
        if v is None:
            continue
        v = float(v)
        if not math.isfinite(v):
            continue
        x = e.get("epoch")
        xs.append(float(x) if x is not None else float(i + 1))
        ys.append(v)
    return xs, ys


@styled
def training_curves_figure(epochs: Sequence[Mapping[str, Any]]) -> str:
    """Two panels over epochs: train/val loss, and validation macro-F1 / mean AUROC.

    Each mapping has ``epoch, train_loss, val_loss, macro_f1, mean_auroc``; any value may
    be ``None`` (that point is left out). An empty list gives a placeholder panel.
    """
    fig = new_figure(10.0, 3.6)
    ax_loss, ax_metric = fig.subplots(1, 2)
    epochs = list(epochs)
    any_point = False
    for ax, series, ylabel, title in (
        (ax_loss, (("train_loss", "train loss", ACCENT, "o"), ("val_loss", "validation loss", ACCENT_2, "s")), "loss", "Loss"),
        (
            ax_metric,
            (("macro_f1", "macro-F1", "#4f8a3c", "o"), ("mean_auroc", "mean AUROC", "#7f5fa8", "s")),
            "score",
            "Validation metrics",
        ),
    ):
        drawn = False
        for key, label, color, marker in series:
            xs, ys = _series(epochs, key)
            if xs:
                ax.plot(xs, ys, color=color, marker=marker, markersize=3.5, linewidth=1.5, label=label)
                drawn = True
        if drawn:
            ax.legend(frameon=False)
            any_point = True
        else:
            no_data(ax)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if any_point:
        lo, hi = ax_metric.get_ylim()
        ax_metric.set_ylim(max(0.0, lo), min(1.02, hi))
    return finish(fig)
