"""Curve figures of the evaluation report: ROC, precision-recall and reliability.

The curves themselves come from :mod:`cxrmodel.evaluation` (:func:`~cxrmodel.evaluation.metrics.roc_curves`,
:func:`~cxrmodel.evaluation.metrics.pr_curves`, :func:`~cxrmodel.evaluation.calibration.reliability_curve`):
this module only draws them, so a report shows exactly the numbers the library computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from cxrmodel.evaluation.calibration import reliability_curve
from cxrmodel.evaluation.metrics import pr_curves, roc_curves
from cxrmodel.findings import FINDINGS
from reports.figures.canvas import ACCENT, ACCENT_2, MUTED, finish, new_figure, palette, styled

__all__ = ["pr_figure", "pr_grid_figure", "reliability_figure", "roc_figure", "roc_grid_figure"]

Curve = tuple[np.ndarray, np.ndarray, float]  # (x, y, score)
CurveFunction = Callable[..., Mapping[str, Curve]]  # roc_curves / pr_curves
MICRO = "micro-average"


def _as_2d(y_true: Any, y_prob: Any, findings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=float)
    p = np.asarray(y_prob, dtype=float)
    if t.ndim != 2 or p.ndim != 2 or t.shape != p.shape:
        raise ValueError(f"y_true and y_prob must both be [N, C] with the same shape; got {t.shape} and {p.shape}")
    if t.shape[1] != len(findings):
        raise ValueError(f"{t.shape[1]} columns but {len(findings)} finding names")
    return t, p


def _micro_average(curves: CurveFunction, t: np.ndarray, p: np.ndarray) -> Curve | None:
    """The curve of all cells pooled (None when they hold one label value only)."""
    return curves(t.reshape(-1, 1), p.reshape(-1, 1), (MICRO,)).get(MICRO)


def _unit_square(ax) -> None:
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")


def _diagonal_square(ax) -> None:
    """The unit square with the dashed diagonal (chance for ROC, perfect calibration for reliability)."""
    ax.plot([0, 1], [0, 1], linestyle="--", color=MUTED, linewidth=0.8)
    _unit_square(ax)


def _panel_grid(n: int, ncols: int, draw: Callable[[Any, int], None], xlabel: str, ylabel: str) -> str:
    """``n`` small square panels on a grid with shared axes and fixed margins (several times
    faster than a tight layout), ``draw(ax, k)`` filling panel ``k``; spare cells hidden; axis
    labels on the bottom panel of each column and the first panel of each row."""
    nrows = max(1, math.ceil(n / ncols))
    fig = new_figure(2.45 * ncols, 2.55 * nrows, layout=None)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.06, top=0.95, wspace=0.25, hspace=0.55)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.set_visible(False)
            continue
        draw(ax, k)
        if k // ncols == nrows - 1 or k + ncols >= n:
            ax.set_xlabel(xlabel)
            ax.tick_params(labelbottom=True)
        if k % ncols == 0:
            ax.set_ylabel(ylabel)
    return finish(fig, tight=False)


def _all_curves_figure(
    y_true: Any,
    y_prob: Any,
    findings: Sequence[str],
    curves: CurveFunction,
    *,
    show_micro: bool,
    title: str,
    legend_title: str,
    xlabel: str,
    ylabel: str,
    diagonal: bool = False,
    drawstyle: str = "default",
) -> str:
    """Every finding's curve on one plot (score in the legend), the micro-average as a dotted
    black line, findings without a curve listed as n/a."""
    t, p = _as_2d(y_true, y_prob, findings)
    drawn = curves(t, p, findings)
    fig = new_figure(7.6, 6.0)
    ax = fig.add_subplot()
    colors = palette(len(findings))
    for i, name in enumerate(findings):
        if name in drawn:
            x, y, score = drawn[name]
            ax.plot(
                x,
                y,
                color=colors[i],
                linewidth=1.3,
                linestyle="-" if i < 10 else "--",
                drawstyle=drawstyle,
                label=f"{name} ({score:.3f})",
            )
    micro = _micro_average(curves, t, p) if show_micro else None
    if micro is not None:
        x, y, score = micro
        ax.plot(x, y, color="black", linewidth=2.0, linestyle=":", drawstyle=drawstyle, label=f"micro-average ({score:.3f})")
    handles, labels = ax.get_legend_handles_labels()
    for name in (f for f in findings if f not in drawn):
        handles.append(ax.plot([], [], color="none")[0])
        labels.append(f"{name} (n/a: one label only)")
    if handles:
        ax.legend(handles, labels, title=legend_title, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    _diagonal_square(ax) if diagonal else _unit_square(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return finish(fig)


def _curve_panels(
    y_true: Any,
    y_prob: Any,
    findings: Sequence[str],
    ncols: int,
    curves: CurveFunction,
    metric: str,
    draw: Callable[[Any, np.ndarray, np.ndarray, np.ndarray], None],
    labels: tuple[str, str],
    diagonal: bool = False,
) -> str:
    """One panel per finding: its curve drawn by ``draw(ax, x, y, labels)``, titled with the score
    and the number of positives (n+); a finding with one label value gets an empty panel."""
    t, p = _as_2d(y_true, y_prob, findings)
    drawn = curves(t, p, findings)

    def panel(ax, k: int) -> None:
        name = findings[k]
        _diagonal_square(ax) if diagonal else _unit_square(ax)
        if name not in drawn:
            ax.set_title(f"{name}\n{metric} n/a", fontsize=9)
            ax.text(0.5, 0.5, "one label only", ha="center", va="center", color=MUTED, fontsize=8, transform=ax.transAxes)
            return
        x, y, score = drawn[name]
        draw(ax, x, y, t[:, k])
        ax.set_title(f"{name}\n{metric} {score:.3f} · n+={int(np.nansum(t[:, k]))}", fontsize=9)

    return _panel_grid(len(findings), ncols, panel, *labels)


@styled
def roc_figure(
    y_true: Any,
    y_prob: Any,
    findings: Sequence[str] = FINDINGS,
    *,
    show_micro: bool = True,
    title: str = "ROC curves (all findings)",
) -> str:
    """All findings' ROC curves (:func:`cxrmodel.evaluation.metrics.roc_curves`) on one plot, AUC
    in the legend, plus the chance diagonal.

    ``y_true`` and ``y_prob`` are ``[N, C]`` arrays (0/1 labels and probabilities in [0, 1])
    with ``C == len(findings)``; anything else is a ValueError. Classes whose labels are all one
    value are listed in the legend as ``n/a``. With ``show_micro`` the micro-average (all cells
    pooled) is a dotted black curve.
    """
    return _all_curves_figure(
        y_true,
        y_prob,
        findings,
        roc_curves,
        show_micro=show_micro,
        title=title,
        legend_title="Finding (AUC)",
        xlabel="False positive rate (1 − specificity)",
        ylabel="True positive rate (sensitivity)",
        diagonal=True,
    )


@styled
def roc_grid_figure(y_true: Any, y_prob: Any, findings: Sequence[str] = FINDINGS, *, ncols: int = 4) -> str:
    """One small ROC panel per finding (4x4 grid for the 14 findings; spare cells hidden).

    Classes with a single label value get an empty panel marked ``AUC n/a``.
    """

    def draw(ax, fpr, tpr, _t) -> None:
        ax.plot(fpr, tpr, color=ACCENT, linewidth=1.4)
        ax.fill_between(fpr, tpr, alpha=0.12, color=ACCENT, step=None)

    return _curve_panels(y_true, y_prob, findings, ncols, roc_curves, "AUC", draw, ("FPR", "TPR"), diagonal=True)


@styled
def pr_figure(
    y_true: Any,
    y_prob: Any,
    findings: Sequence[str] = FINDINGS,
    *,
    show_micro: bool = True,
    title: str = "Precision-recall curves (all findings)",
) -> str:
    """All findings' precision-recall curves (:func:`cxrmodel.evaluation.metrics.pr_curves`) on
    one plot, average precision in the legend; classes with one label value are listed as n/a;
    with ``show_micro`` the pooled micro-average is dotted black."""
    return _all_curves_figure(
        y_true,
        y_prob,
        findings,
        pr_curves,
        show_micro=show_micro,
        title=title,
        legend_title="Finding (AP)",
        xlabel="Recall (sensitivity)",
        ylabel="Precision (PPV)",
        drawstyle="steps-post",
    )


@styled
def pr_grid_figure(y_true: Any, y_prob: Any, findings: Sequence[str] = FINDINGS, *, ncols: int = 4) -> str:
    """One small precision-recall panel per finding: average precision, the number of positives,
    and the no-skill line at the finding's prevalence (dashed grey)."""

    def draw(ax, recall, precision, t) -> None:
        ax.axhline(float(np.nanmean(t)), linestyle="--", color=MUTED, linewidth=0.8)
        ax.plot(recall, precision, color=ACCENT, linewidth=1.4, drawstyle="steps-post")

    return _curve_panels(y_true, y_prob, findings, ncols, pr_curves, "AP", draw, ("recall", "precision"))


@styled
def reliability_figure(
    y_true: Any,
    y_prob: Any,
    y_prob_calibrated: Any = None,
    findings: Sequence[str] = FINDINGS,
    *,
    n_bins: int = 10,
    ncols: int = 4,
) -> str:
    """Reliability curves: one panel per finding plus one for all findings pooled.

    Each panel plots the observed fraction of positives against the mean predicted probability
    in ``n_bins`` equal-width bins (:func:`cxrmodel.evaluation.calibration.reliability_curve`, the
    same bins as sklearn's ``calibration_curve(strategy="uniform")``); the diagonal is perfect
    calibration. With ``y_prob_calibrated`` the calibrated probabilities are drawn too
    ("after", red) next to the raw ones ("before", blue).
    """
    t, p = _as_2d(y_true, y_prob, findings)
    after = None if y_prob_calibrated is None else _as_2d(y_true, y_prob_calibrated, findings)[1]
    panels = [(name, t[:, k], p[:, k], None if after is None else after[:, k]) for k, name in enumerate(findings)]
    panels.append(("All findings (pooled)", t.ravel(), p.ravel(), None if after is None else after.ravel()))

    def draw(ax, k: int) -> None:
        name, tk, pk, ak = panels[k]
        _diagonal_square(ax)
        for probs, colour, label in ((pk, ACCENT, "before"), (ak, ACCENT_2, "after")):
            if probs is None:
                continue
            ok = np.isfinite(tk) & np.isfinite(probs)
            if not ok.any():
                continue
            mean_p, frac_pos, _ = reliability_curve(tk[ok], probs[ok], n_bins=n_bins)
            ax.plot(mean_p, frac_pos, color=colour, marker="o", markersize=2.8, linewidth=1.3, label=label)
        ax.set_title(f"{name}\nn+={int(np.nansum(tk))}", fontsize=9)
        if k == 0 and after is not None:
            ax.legend(frameon=False, loc="upper left", fontsize=7)

    return _panel_grid(len(panels), ncols, draw, "mean predicted", "observed")
