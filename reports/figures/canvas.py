"""The drawing surface every report figure shares: a fresh Agg-backed figure in the report style,
rendered to a ``data:image/png;base64,...`` URI and released.

Every figure uses the object-oriented API on its own :class:`matplotlib.figure.Figure` (no
``pyplot`` state), so it works headless, in worker threads, and never changes the process-wide
matplotlib backend. Figures are rendered at a modest DPI so a complete report stays a few
hundred kilobytes.
"""

from __future__ import annotations

import base64
import functools
import io
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["ACCENT", "ACCENT_2", "DPI", "PNG_PREFIX", "finish", "new_figure", "palette", "png_to_data_uri", "styled"]

DPI = 90
PNG_PREFIX = "data:image/png;base64,"
ACCENT = "#1f4e79"
ACCENT_2 = "#c0504d"
MUTED = "#888888"

STYLE: dict[str, Any] = {
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


def png_to_data_uri(png: bytes) -> str:
    """Wrap raw PNG bytes in a ``data:image/png;base64,`` URI."""
    return PNG_PREFIX + base64.b64encode(png).decode("ascii")


def new_figure(width: float, height: float, *, layout: str | None = "constrained") -> Figure:
    """A ``width x height`` inch figure on its own Agg canvas."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def finish(fig: Figure, *, tight: bool = True) -> str:
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


def styled(func):
    """Run a figure builder inside the report rc style (fonts, grid, spines)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return func(*args, **kwargs)

    return wrapper


def palette(n: int) -> list[tuple[float, float, float, float]]:
    """``n`` colours of ``tab20``, its saturated half first, then the light one."""
    cmap = matplotlib.colormaps["tab20"]
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return [cmap(order[i % 20]) for i in range(n)]


def no_data(ax, text: str = "no data") -> None:
    """A grey note in the middle of an empty panel."""
    ax.text(0.5, 0.5, text, ha="center", va="center", color=MUTED, transform=ax.transAxes)


def frameless(ax) -> None:
    """No tick marks and no spines: for annotated heatmaps."""
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
