"""Confusion matrices of the evaluation report: one annotated 2x2 panel per finding."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from reports.figures.canvas import finish, frameless, new_figure, styled

__all__ = ["confusion_matrices_figure"]


@styled
def confusion_matrices_figure(per_class: Sequence[Mapping[str, Any]], *, ncols: int = 4) -> str:
    """One small annotated 2x2 confusion matrix per finding.

    Each mapping needs ``finding, tp, fp, tn, fn``. Rows are the actual class (negative,
    positive), columns the prediction (negative, positive). Cells show the count and the
    row percentage; colour is the row-normalised rate so rare findings stay readable.
    """
    rows = list(per_class)
    if not rows:
        raise ValueError("confusion_matrices_figure needs at least one class")
    n = len(rows)
    nrows = max(1, math.ceil(n / ncols))
    fig = new_figure(2.45 * ncols, 2.3 * nrows, layout=None)
    fig.subplots_adjust(left=0.09, right=0.99, bottom=0.05, top=0.95, wspace=0.55, hspace=0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.set_visible(False)
            continue
        r = rows[k]
        counts = np.array([[r["tn"], r["fp"]], [r["fn"], r["tp"]]], dtype=float)
        totals = counts.sum(axis=1, keepdims=True)
        rates = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
        ax.grid(False)
        for i in range(2):
            for j in range(2):
                ax.text(
                    j,
                    i,
                    f"{int(counts[i, j]):,}\n{rates[i, j]:.0%}",
                    ha="center",
                    va="center",
                    fontsize=8.5,
                    color="white" if rates[i, j] > 0.55 else "#1a1a1a",
                )
        ax.set_xticks([0, 1], ["pred −", "pred +"])
        ax.set_yticks([0, 1], ["actual −", "actual +"])
        frameless(ax)
        ax.set_title(str(r["finding"]), fontsize=9.5)
    return finish(fig, tight=False)
