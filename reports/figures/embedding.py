"""The embedding map of the evaluation report: a 2-D scatter of the test studies coloured by finding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cxrmodel.findings import FINDINGS, NO_FINDING
from reports.figures.canvas import finish, new_figure, palette, styled

__all__ = ["NO_FINDING_COLOUR", "embedding_map_figure", "map_colour_labels"]

NO_FINDING_COLOUR = "#b5b5b5"


def map_colour_labels(labels: Any, findings: Sequence[str] = FINDINGS, prevalence: Any = None) -> list[str]:
    """One name per study for colouring the embedding map: its rarest positive finding (lowest
    ``prevalence``, default the column means of ``labels``), ``"No Finding"`` without any."""
    y = np.nan_to_num(np.asarray(labels, dtype=float), nan=0.0) > 0
    if y.ndim != 2 or y.shape[1] != len(findings):
        raise ValueError(f"labels must be [M, {len(findings)}]; got shape {y.shape}")
    prev = np.asarray(prevalence if prevalence is not None else y.mean(axis=0), dtype=float)
    rank = np.where(y, prev[None, :], np.inf)
    rarest = np.argmin(rank, axis=1)
    return [NO_FINDING if not y[i].any() else str(findings[rarest[i]]) for i in range(y.shape[0])]


@styled
def embedding_map_figure(
    xy: Any,
    labels: Any,
    findings: Sequence[str] = FINDINGS,
    *,
    prevalence: Any = None,
    title: str = "Map of the test studies' image embeddings (t-SNE)",
) -> str:
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
    fig = new_figure(8.6, 6.2)
    ax = fig.add_subplot()
    # tab20 without its two greys, which would read as "No Finding"
    no_grey = [c for c in palette(20) if not np.allclose(c[0], c[1:3], atol=0.02)]
    colours = {f: no_grey[i % len(no_grey)] for i, f in enumerate(findings)}
    groups = [(NO_FINDING, NO_FINDING_COLOUR)] + [(f, colours[f]) for f in findings]
    size = 14 if xy.shape[0] <= 500 else 7
    arr = np.array(names, dtype=object)
    for name, colour in groups:
        mask = arr == name
        if mask.any():
            ax.scatter(
                xy[mask, 0], xy[mask, 1], s=size, color=colour, alpha=0.75, linewidths=0, label=f"{name} ({int(mask.sum()):,})"
            )
    if xy.shape[0]:
        ax.legend(title="Rarest finding (studies)", loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, markerscale=1.6)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.set_title(f"{title} · {xy.shape[0]:,} studies")
    return finish(fig)
