"""Distribution figures: label counts, finding co-occurrence, ages and category proportions by split."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.colors import PowerNorm

from cxrmodel.findings import FINDINGS
from reports.common import categories_in_order
from reports.figures.canvas import ACCENT, ACCENT_2, finish, frameless, new_figure, no_data, palette, styled

__all__ = ["age_histogram_figure", "cooccurrence_figure", "label_distribution_figure", "proportions_figure"]


@styled
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
    fig = new_figure(7.2, height)
    ax = fig.add_subplot()
    if names:
        y = np.arange(len(names))
        ax.barh(y, values, color=ACCENT, height=0.65)
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        vmax = max(values) if max(values) > 0 else 1
        for yi, v in zip(y, values, strict=True):
            ax.text(v + vmax * 0.01, yi, f"{v:,}", va="center", fontsize=8)
        ax.set_xlim(0, vmax * 1.12)
    else:
        no_data(ax)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return finish(fig)


def _compact_count(n: int) -> str:
    """A count short enough for a heatmap cell (``950 -> '950'``, ``12345 -> '12.3k'``)."""
    n = int(n)
    if abs(n) < 10_000:
        return f"{n:,}"
    if abs(n) < 1_000_000:
        return f"{n / 1000:.1f}k" if abs(n) < 100_000 else f"{n / 1000:.0f}k"
    return f"{n / 1_000_000:.1f}M"


@styled
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
    y = (np.nan_to_num(arr, nan=0.0) > 0).astype(np.int64)
    counts = y.T @ y
    n = len(findings)
    vmax = max(1, int(counts.max()) if counts.size else 1)
    norm = PowerNorm(gamma=0.5, vmin=0, vmax=vmax)
    side = max(4.0, 0.55 * n + 2.2)
    fig = new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues", norm=norm)
    ax.grid(False)
    fontsize = 7.5 if n <= 10 else 6.5
    for i in range(n):
        for j in range(n):
            v = int(counts[i, j])
            ax.text(
                j,
                i,
                _compact_count(v),
                ha="center",
                va="center",
                fontsize=fontsize,
                fontweight="bold" if i == j else "normal",
                color="white" if norm(v) > 0.6 else ("#9aa5b1" if v == 0 else "#1a1a1a"),
            )
    names = [str(f).replace("_", " ") for f in findings]
    ax.set_xticks(np.arange(n), names, rotation=55, ha="right", rotation_mode="anchor")
    ax.set_yticks(np.arange(n), names)
    frameless(ax)
    ax.set_title(f"{title} · N={arr.shape[0]:,}")
    cbar = fig.colorbar(image, ax=ax, shrink=0.75, pad=0.02)
    cbar.set_label("studies (square-root scale)")
    return finish(fig)


def _finite(values: Any) -> np.ndarray:
    arr = np.asarray(values if values is not None else [], dtype=float).ravel()
    return arr[np.isfinite(arr)]


@styled
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
    fig = new_figure(7.6, 3.8)
    ax = fig.add_subplot()
    present = [(name, a) for name, a in series if a.size]
    if present:
        hi = max(float(a.max()) for _, a in present)
        lo = min(float(a.min()) for _, a in present)
        start = bin_width * math.floor(min(lo, 0.0) / bin_width)
        stop = bin_width * (math.floor(hi / bin_width) + 1)
        edges = np.arange(start, stop + bin_width / 2, bin_width)
        colors = [ACCENT, ACCENT_2, "#4f8a3c", "#7f5fa8"] + palette(max(0, len(present) - 4))
        for k, (name, a) in enumerate(present):
            weights = np.full(a.shape, 100.0 / a.size) if percent else None
            color = colors[k % len(colors)]
            ax.hist(a, bins=edges, weights=weights, histtype="stepfilled", alpha=0.22, color=color)
            ax.hist(a, bins=edges, weights=weights, histtype="step", linewidth=1.6, color=color, label=f"{name} (n={a.size:,})")
        ax.set_xlim(edges[0], edges[-1])
        ax.legend(frameon=False)
    else:
        no_data(ax, "no ages recorded")
    ax.set_xlabel("age (years)")
    ax.set_ylabel("% of the split's studies" if percent else "studies")
    ax.set_title(title)
    return finish(fig)


def _fraction(value: Any) -> float:
    try:
        v = float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0
    return v if math.isfinite(v) else 0.0


@styled
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
    categories = categories_in_order(table)
    fig = new_figure(max(4.8, 1.3 * len(groups) * max(1, len(categories)) * 0.6 + 2.0), 3.6)
    ax = fig.add_subplot()
    if groups and categories:
        x = np.arange(len(groups))
        width = 0.8 / len(categories)
        colors = [ACCENT, ACCENT_2] if len(categories) <= 2 else palette(len(categories))
        top = 0.0
        for k, cat in enumerate(categories):
            values = [_fraction({str(c): v for c, v in (row or {}).items()}.get(cat)) for row in table.values()]
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
        no_data(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return finish(fig)
