"""Matplotlib figures for the HTML reports, each returned as a ``data:image/png;base64,...`` URI.

Every function draws on a fresh :class:`matplotlib.figure.Figure` attached to the Agg
canvas directly (the object-oriented API, no ``pyplot`` state), so it works headless, in
worker threads, and never changes the process-wide matplotlib backend. Each figure is
cleared as soon as its PNG has been written. Figures are rendered at a modest DPI so a
complete report stays a few hundred kilobytes.

Inputs are plain Python/numpy data; nothing here knows about the database or Prefect.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

from cxrmodel.findings import FINDINGS

__all__ = [
    "DPI",
    "confusion_matrices_figure",
    "image_to_data_uri",
    "label_distribution_figure",
    "png_to_data_uri",
    "roc_figure",
    "roc_grid_figure",
    "training_curves_figure",
]

DPI = 90
PNG_PREFIX = "data:image/png;base64,"

_STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linestyle": "-",
    "grid.linewidth": 0.6,
}
_ACCENT = "#1f4e79"
_ACCENT_2 = "#c0504d"


# --------------------------------------------------------------------------- helpers


def png_to_data_uri(png: bytes) -> str:
    """Wrap raw PNG bytes in a ``data:image/png;base64,`` URI."""
    return PNG_PREFIX + base64.b64encode(png).decode("ascii")


def _new_figure(width: float, height: float, *, layout: str | None = "constrained") -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _finish(fig: Figure, *, tight: bool = True) -> str:
    """Render ``fig`` to PNG, release it, and return the data URI.

    ``tight`` crops to the drawn content (an extra layout pass; the many-panel grids use
    fixed margins instead, which is several times faster).
    """
    buf = io.BytesIO()
    extra = {"bbox_inches": "tight", "pad_inches": 0.08} if tight else {}
    try:
        fig.savefig(buf, format="png", dpi=DPI, facecolor="white", **extra)
    finally:
        fig.clear()
    return png_to_data_uri(buf.getvalue())


def _styled(func):
    """Run a figure builder inside the report rc style (fonts, grid, spines)."""
    import functools

    import matplotlib

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(_STYLE):
            return func(*args, **kwargs)

    return wrapper


def _as_2d(y_true: Any, y_prob: Any, findings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=float)
    p = np.asarray(y_prob, dtype=float)
    if t.ndim != 2 or p.ndim != 2 or t.shape != p.shape:
        raise ValueError(f"y_true and y_prob must both be [N, C] with the same shape; got {t.shape} and {p.shape}")
    if t.shape[1] != len(findings):
        raise ValueError(f"{t.shape[1]} columns but {len(findings)} finding names")
    return t, p


def _finite_pairs(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The finite ``(labels as int, probabilities)`` of one class; None with one label value only."""
    ok = np.isfinite(t) & np.isfinite(p)
    t, p = t[ok], p[ok]
    if t.size == 0 or np.unique(t).size < 2:
        return None
    return t.astype(int), p


def _class_roc(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """ROC curve of one class, or None when it cannot be drawn (one label only / no data)."""
    pairs = _finite_pairs(t, p)
    if pairs is None:
        return None
    fpr, tpr, _ = roc_curve(*pairs)
    return fpr, tpr, float(auc(fpr, tpr))


def _palette(n: int) -> list[tuple[float, float, float, float]]:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    # even entries first (saturated), then the light ones
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return [cmap(order[i % 20]) for i in range(n)]


def _panel_grid(n: int, ncols: int, draw, xlabel: str, ylabel: str) -> str:
    """``n`` small square panels on a grid with shared axes and fixed margins (several times
    faster than a tight layout), ``draw(ax, k)`` filling panel ``k``; spare cells hidden; axis
    labels on the bottom panel of each column and the first panel of each row."""
    nrows = max(1, math.ceil(n / ncols))
    fig = _new_figure(2.45 * ncols, 2.55 * nrows, layout=None)
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
    return _finish(fig, tight=False)


def _one_label_only(ax, finding: str, metric: str) -> None:
    ax.set_title(f"{finding}\n{metric} n/a", fontsize=9)
    ax.text(0.5, 0.5, "one label only", ha="center", va="center", color="#888888", fontsize=8,
            transform=ax.transAxes)


def _all_curves(ax, t: np.ndarray, p: np.ndarray, findings: Sequence[str], curve, *, show_micro: bool,
                legend_title: str, drawstyle: str = "default") -> None:
    """Every class's ``curve(t, p) -> (x, y, score) | None`` on ``ax`` (score in the legend), the
    micro-average (all cells pooled) as a dotted black line, classes without a curve listed as n/a."""
    colors = _palette(len(findings))
    skipped = []
    for i, name in enumerate(findings):
        drawn = curve(t[:, i], p[:, i])
        if drawn is None:
            skipped.append(name)
            continue
        x, y, score = drawn
        ax.plot(x, y, color=colors[i], linewidth=1.3, linestyle="-" if i < 10 else "--", drawstyle=drawstyle,
                label=f"{name} ({score:.3f})")
    if show_micro:
        drawn = curve(t.ravel(), p.ravel())
        if drawn is not None:
            x, y, score = drawn
            ax.plot(x, y, color="black", linewidth=2.0, linestyle=":", drawstyle=drawstyle,
                    label=f"micro-average ({score:.3f})")
    handles, labels = ax.get_legend_handles_labels()
    for name in skipped:
        handles.append(ax.plot([], [], color="none")[0])
        labels.append(f"{name} (n/a: one label only)")
    if handles:
        ax.legend(handles, labels, title=legend_title, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)


def _unit_square(ax) -> None:
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")


def _roc_axes_style(ax) -> None:
    ax.plot([0, 1], [0, 1], linestyle="--", color="#888888", linewidth=0.8)
    _unit_square(ax)


# --------------------------------------------------------------------------- figures


@_styled
def roc_figure(
    y_true: Any,
    y_prob: Any,
    findings: Sequence[str] = FINDINGS,
    *,
    show_micro: bool = True,
    title: str = "ROC curves (all findings)",
) -> str:
    """All findings' ROC curves on one plot, AUC in the legend, plus the chance diagonal.

    ``y_true`` and ``y_prob`` are ``[N, C]`` arrays (0/1 labels and probabilities) with
    ``C == len(findings)``. Classes whose labels are all one value are skipped (listed in
    the legend as ``n/a``); non-finite entries are ignored. With ``show_micro`` a dashed
    black micro-average curve is added.
    """
    return _curves_figure(y_true, y_prob, findings, _class_roc, show_micro=show_micro, title=title,
                          legend_title="Finding (AUC)", xlabel="False positive rate (1 − specificity)",
                          ylabel="True positive rate (sensitivity)", diagonal=True)


def _curves_figure(y_true: Any, y_prob: Any, findings: Sequence[str], curve, *, show_micro: bool, title: str,
                   legend_title: str, xlabel: str, ylabel: str, diagonal: bool = False,
                   drawstyle: str = "default") -> str:
    t, p = _as_2d(y_true, y_prob, findings)
    fig = _new_figure(7.6, 6.0)
    ax = fig.add_subplot()
    _all_curves(ax, t, p, findings, curve, show_micro=show_micro, legend_title=legend_title, drawstyle=drawstyle)
    if diagonal:
        _roc_axes_style(ax)
    else:
        _unit_square(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _finish(fig)


@_styled
def roc_grid_figure(
    y_true: Any,
    y_prob: Any,
    findings: Sequence[str] = FINDINGS,
    *,
    ncols: int = 4,
) -> str:
    """One small ROC subplot per finding (4x4 grid for the 14 findings; spare cells hidden).

    Classes with a single label value get an empty panel marked ``AUC n/a``.
    """
    def draw(ax, fpr, tpr, _t) -> None:
        ax.plot(fpr, tpr, color=_ACCENT, linewidth=1.4)
        ax.fill_between(fpr, tpr, alpha=0.12, color=_ACCENT, step=None)

    return _curve_panels(y_true, y_prob, findings, ncols, _class_roc, "AUC", draw, ("FPR", "TPR"), diagonal=True)


def _curve_panels(y_true: Any, y_prob: Any, findings: Sequence[str], ncols: int, curve, metric: str, draw,
                  labels: tuple[str, str], diagonal: bool = False) -> str:
    """One panel per finding: ``curve(t, p) -> (x, y, score) | None`` drawn by ``draw(ax, x, y, t)``,
    titled with the score and the number of positives (n+)."""
    t, p = _as_2d(y_true, y_prob, findings)

    def panel(ax, k: int) -> None:
        drawn = curve(t[:, k], p[:, k])
        _roc_axes_style(ax) if diagonal else _unit_square(ax)
        if drawn is None:
            _one_label_only(ax, findings[k], metric)
            return
        x, y, score = drawn
        draw(ax, x, y, t[:, k])
        ax.set_title(f"{findings[k]}\n{metric} {score:.3f} · n+={int(np.nansum(t[:, k]))}", fontsize=9)

    return _panel_grid(len(findings), ncols, panel, *labels)


@_styled
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
    fig = _new_figure(2.45 * ncols, 2.3 * nrows, layout=None)
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
                ax.text(j, i, f"{int(counts[i, j]):,}\n{rates[i, j]:.0%}", ha="center", va="center",
                        fontsize=8.5, color="white" if rates[i, j] > 0.55 else "#1a1a1a")
        ax.set_xticks([0, 1], ["pred −", "pred +"])
        ax.set_yticks([0, 1], ["actual −", "actual +"])
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_title(str(r["finding"]), fontsize=9.5)
    return _finish(fig, tight=False)


def _series(epochs: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
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


@_styled
def training_curves_figure(epochs: Sequence[Mapping[str, Any]]) -> str:
    """Two panels over epochs: train/val loss, and validation macro-F1 / mean AUROC.

    Each mapping has ``epoch, train_loss, val_loss, macro_f1, mean_auroc``; any value may
    be ``None`` (that point is left out). An empty list gives a placeholder panel.
    """
    fig = _new_figure(10.0, 3.6)
    ax_loss, ax_metric = fig.subplots(1, 2)
    epochs = list(epochs)
    any_point = False
    for ax, series, ylabel, title in (
        (ax_loss, (("train_loss", "train loss", _ACCENT, "o"), ("val_loss", "validation loss", _ACCENT_2, "s")),
         "loss", "Loss"),
        (ax_metric, (("macro_f1", "macro-F1", "#4f8a3c", "o"), ("mean_auroc", "mean AUROC", "#7f5fa8", "s")),
         "score", "Validation metrics"),
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
            ax.text(0.5, 0.5, "no data", ha="center", va="center", color="#888888", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if any_point:
        lo, hi = ax_metric.get_ylim()
        ax_metric.set_ylim(max(0.0, lo), min(1.02, hi))
    return _finish(fig)


@_styled
def label_distribution_figure(
    counts: Mapping[str, int],
    *,
    title: str = "Label distribution",
    xlabel: str = "studies",
) -> str:
    """Horizontal bar chart of ``counts`` (label -> count), first key at the top, bars annotated."""
    names = [str(k) for k in counts]
    values = [0 if v is None else int(v) for v in counts.values()]
    height = max(2.0, 0.32 * len(names) + 0.9)
    fig = _new_figure(7.2, height)
    ax = fig.add_subplot()
    if names:
        y = np.arange(len(names))
        ax.barh(y, values, color=_ACCENT, height=0.65)
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        vmax = max(values) if max(values) > 0 else 1
        for yi, v in zip(y, values, strict=True):
            ax.text(v + vmax * 0.01, yi, f"{v:,}", va="center", fontsize=8)
        ax.set_xlim(0, vmax * 1.12)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", color="#888888", transform=ax.transAxes)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _finish(fig)


def image_to_data_uri(image: Any, *, max_side: int = 320) -> str:
    """A grayscale image array (``[H, W]``, any numeric range) as a small PNG data URI.

    Useful for the ``examples`` of the evaluation report. The image is min-max scaled to
    0..255 and downsampled by striding so its longer side is at most ``max_side``.
    """
    import matplotlib.image as mpimg

    arr = np.asarray(image, dtype=float)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr[0] if arr.shape[0] == 1 else arr.mean(axis=0)
    if arr.ndim == 3:
        arr = arr.mean(axis=-1)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"expected a 2-D image, got shape {np.shape(image)}")
    step = max(1, math.ceil(max(arr.shape) / max_side))
    arr = arr[::step, ::step]
    finite = np.isfinite(arr)
    lo, hi = (float(arr[finite].min()), float(arr[finite].max())) if finite.any() else (0.0, 1.0)
    scaled = np.zeros_like(arr) if hi <= lo else (np.where(finite, arr, lo) - lo) / (hi - lo)
    buf = io.BytesIO()
    mpimg.imsave(buf, (scaled * 255).astype(np.uint8), cmap="gray", vmin=0, vmax=255, format="png")
    return png_to_data_uri(buf.getvalue())


# --------------------------------------------------------------------------- PR, reliability, map, Grad-CAM

__all__ += ["embedding_map_figure", "gradcam_overlay", "map_colour_labels", "pr_figure", "pr_grid_figure",
            "reliability_figure"]

NO_FINDING_COLOUR = "#b5b5b5"


def _class_pr(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """``(recall, precision, average precision)`` of one class, or None with one label value only."""
    pairs = _finite_pairs(t, p)
    if pairs is None:
        return None
    precision, recall, _ = precision_recall_curve(*pairs)
    return recall, precision, float(average_precision_score(*pairs))


@_styled
def pr_figure(y_true: Any, y_prob: Any, findings: Sequence[str] = FINDINGS, *, show_micro: bool = True,
              title: str = "Precision-recall curves (all findings)") -> str:
    """All findings' precision-recall curves on one plot (sklearn ``precision_recall_curve``),
    average precision (``average_precision_score``) in the legend; classes with one label
    value are listed as n/a; with ``show_micro`` the pooled micro-average is dotted black."""
    return _curves_figure(y_true, y_prob, findings, _class_pr, show_micro=show_micro, title=title,
                          legend_title="Finding (AP)", xlabel="Recall (sensitivity)", ylabel="Precision (PPV)",
                          drawstyle="steps-post")


@_styled
def pr_grid_figure(y_true: Any, y_prob: Any, findings: Sequence[str] = FINDINGS, *, ncols: int = 4) -> str:
    """One small precision-recall panel per finding: average precision, the number of positives,
    and the no-skill line at the finding's prevalence (dashed grey)."""
    def draw(ax, recall, precision, t) -> None:
        ax.axhline(float(np.nanmean(t)), linestyle="--", color="#888888", linewidth=0.8)
        ax.plot(recall, precision, color=_ACCENT, linewidth=1.4, drawstyle="steps-post")

    return _curve_panels(y_true, y_prob, findings, ncols, _class_pr, "AP", draw, ("recall", "precision"))


@_styled
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
    in ``n_bins`` equal-width bins (:func:`cxrmodel.evaluation.calibration.reliability_curve`, the same bins
    as sklearn's ``calibration_curve(strategy="uniform")``); the diagonal is perfect
    calibration. With ``y_prob_calibrated`` the calibrated probabilities are drawn too
    ("after", orange) next to the raw ones ("before", blue).
    """
    from cxrmodel.evaluation.calibration import reliability_curve

    t, p = _as_2d(y_true, y_prob, findings)
    after = None if y_prob_calibrated is None else _as_2d(y_true, y_prob_calibrated, findings)[1]
    panels = [(name, t[:, k], p[:, k], None if after is None else after[:, k]) for k, name in enumerate(findings)]
    panels.append(("All findings (pooled)", t.ravel(), p.ravel(), None if after is None else after.ravel()))

    def draw(ax, k: int) -> None:
        name, tk, pk, ak = panels[k]
        _roc_axes_style(ax)  # the diagonal is perfect calibration
        for probs, colour, label in ((pk, _ACCENT, "before"), (ak, _ACCENT_2, "after")):
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


def map_colour_labels(labels: Any, findings: Sequence[str] = FINDINGS, prevalence: Any = None) -> list[str]:
    """One name per study for colouring the embedding map: its rarest positive finding (lowest
    ``prevalence``, default the column means of ``labels``), ``"No Finding"`` without any."""
    y = np.nan_to_num(np.asarray(labels, dtype=float), nan=0.0) > 0
    if y.ndim != 2 or y.shape[1] != len(findings):
        raise ValueError(f"labels must be [M, {len(findings)}]; got shape {y.shape}")
    prev = np.asarray(prevalence if prevalence is not None else y.mean(axis=0), dtype=float)
    rank = np.where(y, prev[None, :], np.inf)
    rarest = np.argmin(rank, axis=1)
    return ["No Finding" if not y[i].any() else str(findings[rarest[i]]) for i in range(y.shape[0])]


@_styled
def embedding_map_figure(xy: Any, labels: Any, findings: Sequence[str] = FINDINGS, *, prevalence: Any = None,
                         title: str = "Map of the test studies' image embeddings (t-SNE)") -> str:
    """Scatter of a 2-D embedding map ``xy [M, 2]`` coloured by finding.

    ``labels`` is the ``[M, C]`` 0/1 label matrix of the mapped studies. A study with several
    findings takes the colour of its rarest one (see :func:`map_colour_labels`, so small classes
    stay visible); studies without any finding are grey ("No Finding") and drawn first, below the
    others. The legend gives each colour's number of studies.
    """
    xy = np.asarray(xy, dtype=float)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"xy must be [M, 2]; got shape {xy.shape}")
    names = map_colour_labels(labels, findings, prevalence)
    if len(names) != xy.shape[0]:
        raise ValueError(f"{xy.shape[0]} points but {len(names)} label rows")
    fig = _new_figure(8.6, 6.2)
    ax = fig.add_subplot()
    # tab20 without its two greys, which would read as "No Finding"
    no_grey = [c for c in _palette(20) if not np.allclose(c[0], c[1:3], atol=0.02)]
    colours = {f: no_grey[i % len(no_grey)] for i, f in enumerate(findings)}
    groups = [("No Finding", NO_FINDING_COLOUR)] + [(f, colours[f]) for f in findings]
    size = 14 if xy.shape[0] <= 500 else 7
    arr = np.array(names, dtype=object)
    for name, colour in groups:
        mask = arr == name
        if mask.any():
            ax.scatter(xy[mask, 0], xy[mask, 1], s=size, color=colour, alpha=0.75, linewidths=0,
                       label=f"{name} ({int(mask.sum()):,})")
    if xy.shape[0]:
        ax.legend(title="Rarest finding (studies)", loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False,
                  markerscale=1.6)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.set_title(f"{title} · {xy.shape[0]:,} studies")
    return _finish(fig)


def gradcam_overlay(image: Any, heatmap: Any, *, alpha: float = 0.5, min_side: int = 224, cmap: str = "jet") -> str:
    """A grey image with a Grad-CAM heat map blended over it, as a PNG data URI.

    ``image`` is ``[H, W]`` (any range; min-max scaled), ``heatmap`` ``[H, W]`` in ``[0, 1]``. Each
    pixel mixes the grey image with ``cmap(heat)`` in proportion ``alpha * heat``, so cold regions
    show the plain image. Small images are enlarged by an integer factor (nearest neighbour) to
    at least ``min_side`` pixels on their shorter side.
    """
    import matplotlib
    import matplotlib.image as mpimg

    grey = np.asarray(image, dtype=float)
    heat = np.asarray(heatmap, dtype=float)
    if grey.ndim != 2 or heat.shape != grey.shape:
        raise ValueError(f"image and heatmap must be the same 2-D shape; got {grey.shape} and {heat.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    finite = np.isfinite(grey)
    lo, hi = (float(grey[finite].min()), float(grey[finite].max())) if finite.any() else (0.0, 1.0)
    grey = np.zeros_like(grey) if hi <= lo else (np.where(finite, grey, lo) - lo) / (hi - lo)
    heat = np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0)
    weight = (alpha * heat)[..., None]
    rgb = (1.0 - weight) * grey[..., None] + weight * matplotlib.colormaps[cmap](heat)[..., :3]
    factor = max(1, math.ceil(min_side / max(1, min(rgb.shape[:2]))))
    rgb = np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)
    buf = io.BytesIO()
    mpimg.imsave(buf, (np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8), format="png")
    return png_to_data_uri(buf.getvalue())


# --------------------------------------------------------------------------- dataset report figures

__all__ += ["age_histogram_figure", "cooccurrence_figure", "proportions_figure"]


def _compact_count(n: int) -> str:
    """A count short enough for a heatmap cell (``950 -> '950'``, ``12345 -> '12.3k'``)."""
    n = int(n)
    if abs(n) < 10_000:
        return f"{n:,}"
    if abs(n) < 1_000_000:
        return f"{n / 1000:.1f}k" if abs(n) < 100_000 else f"{n / 1000:.0f}k"
    return f"{n / 1_000_000:.1f}M"


@_styled
def cooccurrence_figure(
    labels: Any,
    findings: Sequence[str] = FINDINGS,
    *,
    title: str = "Finding co-occurrence (studies)",
) -> str:
    """Annotated ``C x C`` heatmap of co-occurrence counts from a ``[N, C]`` 0/1 label array.

    Cell ``(i, j)`` is the number of studies that have both finding ``i`` and finding ``j``;
    the diagonal is each finding's positive count (its prevalence). Any entry greater than
    zero counts as positive; NaN counts as negative. Colour uses a square-root scale so the
    off-diagonal cells stay visible next to the much larger diagonal; a class with no
    positives gives an all-zero row and column (and an all-zero array a blank map).
    """
    arr = np.asarray(labels, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"labels must be a [N, C] array, got shape {arr.shape}")
    if arr.shape[1] != len(findings):
        raise ValueError(f"{arr.shape[1]} label columns but {len(findings)} finding names")
    from matplotlib.colors import PowerNorm

    y = (np.nan_to_num(arr, nan=0.0) > 0).astype(np.int64)
    counts = y.T @ y
    n = len(findings)
    vmax = max(1, int(counts.max()) if counts.size else 1)
    norm = PowerNorm(gamma=0.5, vmin=0, vmax=vmax)
    side = max(4.0, 0.55 * n + 2.2)
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues", norm=norm)
    ax.grid(False)
    fontsize = 7.5 if n <= 10 else 6.5
    for i in range(n):
        for j in range(n):
            v = int(counts[i, j])
            ax.text(j, i, _compact_count(v), ha="center", va="center", fontsize=fontsize,
                    fontweight="bold" if i == j else "normal",
                    color="white" if norm(v) > 0.6 else ("#9aa5b1" if v == 0 else "#1a1a1a"))
    names = [str(f).replace("_", " ") for f in findings]
    ax.set_xticks(np.arange(n), names, rotation=55, ha="right", rotation_mode="anchor")
    ax.set_yticks(np.arange(n), names)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(f"{title} · N={arr.shape[0]:,}")
    cbar = fig.colorbar(image, ax=ax, shrink=0.75, pad=0.02)
    cbar.set_label("studies (square-root scale)")
    return _finish(fig)


def _finite(values: Any) -> np.ndarray:
    arr = np.asarray(values if values is not None else [], dtype=float).ravel()
    return arr[np.isfinite(arr)]


@_styled
def age_histogram_figure(
    ages_by_split: Mapping[str, Any],
    *,
    bin_width: float = 5.0,
    percent: bool = True,
    title: str = "Patient age by split",
) -> str:
    """Overlaid age histograms, one per split, on shared bins of ``bin_width`` years.

    ``ages_by_split`` maps a split name to a 1-D array of ages (``None``/NaN are left out).
    With ``percent`` (the default) each split is scaled to the percentage of its own studies,
    so a small test split is comparable with a large training split; otherwise raw counts.
    The legend gives each split's number of studies with a known age.
    """
    series = [(str(name), _finite(values)) for name, values in ages_by_split.items()]
    fig = _new_figure(7.6, 3.8)
    ax = fig.add_subplot()
    present = [(name, a) for name, a in series if a.size]
    if present:
        hi = max(float(a.max()) for _, a in present)
        lo = min(float(a.min()) for _, a in present)
        start = bin_width * math.floor(min(lo, 0.0) / bin_width)
        stop = bin_width * (math.floor(hi / bin_width) + 1)
        edges = np.arange(start, stop + bin_width / 2, bin_width)
        colors = [_ACCENT, _ACCENT_2, "#4f8a3c", "#7f5fa8"] + _palette(max(0, len(present) - 4))
        for k, (name, a) in enumerate(present):
            weights = np.full(a.shape, 100.0 / a.size) if percent else None
            color = colors[k % len(colors)]
            ax.hist(a, bins=edges, weights=weights, histtype="stepfilled", alpha=0.22, color=color)
            ax.hist(a, bins=edges, weights=weights, histtype="step", linewidth=1.6, color=color,
                    label=f"{name} (n={a.size:,})")
        ax.set_xlim(edges[0], edges[-1])
        ax.legend(frameon=False)
    else:
        ax.text(0.5, 0.5, "no ages recorded", ha="center", va="center", color="#888888", transform=ax.transAxes)
    ax.set_xlabel("age (years)")
    ax.set_ylabel("% of the split's studies" if percent else "studies")
    ax.set_title(title)
    return _finish(fig)


@_styled
def proportions_figure(
    table: Mapping[str, Mapping[str, Any]],
    title: str = "Proportions by split",
    *,
    ylabel: str = "share of studies",
) -> str:
    """Grouped bars: one group per outer key (e.g. split), one bar per category.

    ``table`` maps a group to ``category -> fraction`` (``{"train": {"F": 0.43, "M": 0.57}}``);
    categories are the union over groups in first-seen order, a missing or ``None`` value is
    drawn as 0. Bars are annotated with percentages.
    """
    groups = [str(g) for g in table]
    categories: list[str] = []
    for row in table.values():
        for c in row or {}:
            if str(c) not in categories:
                categories.append(str(c))
    fig = _new_figure(max(4.8, 1.3 * len(groups) * max(1, len(categories)) * 0.6 + 2.0), 3.6)
    ax = fig.add_subplot()
    if groups and categories:
        x = np.arange(len(groups))
        width = 0.8 / len(categories)
        colors = [_ACCENT, _ACCENT_2] if len(categories) <= 2 else _palette(len(categories))
        top = 0.0
        for k, cat in enumerate(categories):
            values = []
            for row in table.values():
                v = {str(c): val for c, val in (row or {}).items()}.get(cat)
                try:
                    fv = float(v) if v is not None else 0.0
                except (TypeError, ValueError):
                    fv = 0.0
                values.append(fv if math.isfinite(fv) else 0.0)
            pos = x - 0.4 + width * (k + 0.5)
            ax.bar(pos, values, width=width * 0.92, color=colors[k], label=cat)
            for px, v in zip(pos, values, strict=True):
                ax.text(px, v, f"{100 * v:.0f}%", ha="center", va="bottom", fontsize=7.5)
            top = max(top, max(values) if values else 0.0)
        ax.set_xticks(x, groups)
        ax.set_ylim(0, max(1.0, top) * 1.12)
        ax.yaxis.set_major_formatter(lambda v, _pos: f"{100 * v:.0f}%")
        ax.legend(frameon=False, ncols=min(len(categories), 6), loc="upper center", bbox_to_anchor=(0.5, -0.12))
        ax.grid(axis="x", visible=False)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", color="#888888", transform=ax.transAxes)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _finish(fig)
