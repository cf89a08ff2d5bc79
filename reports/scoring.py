"""The nightly scoring report: view models over a :class:`~reports.contexts.ScoringContext` and
its rendering to one self-contained HTML file.

Per finding it shows the flag counts against the training prevalence under the drift rule of
:mod:`cxrmodel.evaluation.drift`, the failures with a count per reason, and the top studies with
their most similar labelled studies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrmodel.evaluation.drift import DRIFT_MIN_COUNT, DRIFT_RATIO, drift_status
from cxrmodel.io import atomic_write_text
from reports import figures
from reports.common import finding_order, reason_counts
from reports.contexts import ScoringContext, TopStudy
from reports.environment import render_template

__all__ = ["render_scoring_html", "render_scoring_report", "scoring_view"]


def _top_study_view(study: TopStudy) -> dict[str, Any]:
    return {
        "study_key": study.study_key,
        "probability": study.probability,
        "similar": [{"study_key": s.study_key, "cosine": s.cosine, "findings": s.findings} for s in study.similar or ()],
    }


def _flags_view(ctx: ScoringContext) -> list[dict[str, Any]]:
    """Flag rows in FINDINGS order, each with its drift ``ratio`` and ``drift`` decision."""
    rows = []
    for f in sorted(ctx.flags, key=lambda f: finding_order(f.finding)):
        status = drift_status(f.n_flagged, f.flag_rate, f.training_prevalence, ctx.run.n_scored)
        rows.append({**f.model_dump(), "ratio": status.ratio, "drift": status.drift})
    return rows


def scoring_view(ctx: ScoringContext) -> dict[str, Any]:
    """The names ``scoring.html.j2`` renders, the flag bar chart included."""
    flags = _flags_view(ctx)
    top_studies = [
        {"finding": name, "studies": [_top_study_view(s) for s in ctx.top_studies[name]]}
        for name in sorted(ctx.top_studies, key=finding_order)
    ]
    flag_fig = None
    if flags:
        flag_fig = figures.label_distribution_figure(
            {f["finding"]: f["n_flagged"] or 0 for f in flags}, title="Studies flagged per finding", xlabel="flagged studies"
        )
    return {
        "title": ctx.title,
        "generated_at": ctx.generated_at,
        "run": ctx.run.model_dump(),
        "refresh": None if ctx.refresh is None else ctx.refresh.model_dump(),
        "failures": [f.model_dump() for f in ctx.failures],
        "failure_reasons": [{"reason": r, "count": n} for r, n in reason_counts(f.reason for f in ctx.failures)],
        "flags": flags,
        "drifting": [f for f in flags if f["drift"]],
        "drift_ratio": DRIFT_RATIO,
        "drift_min_count": DRIFT_MIN_COUNT,
        "top_studies": top_studies,
        "has_similar": any(s["similar"] for group in top_studies for s in group["studies"]),
        "retrieval": None if ctx.retrieval is None else ctx.retrieval.model_dump(),
        "flag_fig": flag_fig,
    }


def render_scoring_html(context: ScoringContext) -> str:
    """The nightly scoring report as an HTML string (see :func:`render_scoring_report`)."""
    if not isinstance(context, ScoringContext):
        raise TypeError(f"expected a ScoringContext, got {type(context).__name__}")
    return render_template("scoring.html.j2", scoring_view(context))


def render_scoring_report(context: ScoringContext, out_path: str | Path) -> Path:
    """Render the nightly scoring report of ``context`` to ``out_path`` (atomic write; folders
    created). Returns ``out_path``.

    A failed refresh before the run is a warning at the top; findings that drift
    (:func:`cxrmodel.evaluation.drift.drift_status`) are marked in the flags table and listed
    in a warning above it. One image: the bar chart of flagged studies per finding.
    """
    return atomic_write_text(Path(out_path), render_scoring_html(context))
