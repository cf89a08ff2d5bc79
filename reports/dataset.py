"""The dataset report: view models over a :class:`~reports.contexts.DatasetContext` and its
rendering to one self-contained HTML file (splits, labels, balancing, demographics and the
quarantined rows)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrmodel.findings import FINDING_INDEX, FINDINGS, NO_FINDING
from cxrmodel.io import atomic_write_text
from reports import figures
from reports.common import categories_in_order, reason_counts
from reports.contexts import Balancing, DatasetContext, QuarantineEntry, SplitCount
from reports.environment import finite_or_none, render_template

__all__ = ["SPLIT_ORDER", "dataset_view", "render_dataset_html", "render_dataset_report"]

SPLIT_ORDER = ("train", "val", "test")


def _split_order(name: Any) -> tuple[int, str]:
    s = str(name)
    return (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s)


def _label_order(name: Any) -> tuple[int, int, str]:
    """FINDINGS order, then ``No Finding``, then anything else alphabetically."""
    s = str(name)
    if s in FINDING_INDEX:
        return (0, FINDING_INDEX[s], s)
    return (1 if s == NO_FINDING else 2, 0, s)


def _ratio(num: Any, den: Any) -> float | None:
    n, d = finite_or_none(num), finite_or_none(den)
    return n / d if n is not None and d else None


def _split_view(split_counts: Mapping[str, SplitCount]) -> list[dict[str, Any]]:
    rows = sorted(
        ({"split": str(name), **count.model_dump()} for name, count in split_counts.items()),
        key=lambda r: _split_order(r["split"]),
    )
    total = sum(int(r["n_studies"] or 0) for r in rows)
    for r in rows:
        r["share"] = _ratio(r["n_studies"], total)
        r["per_patient"] = _ratio(r["n_studies"], r["n_patients"])
    return rows


def _label_table_view(
    by_split: Mapping[str, Mapping[str, Any]], studies_in: Mapping[str, Any]
) -> tuple[list[str], list[dict[str, Any]]]:
    splits = sorted(by_split, key=_split_order)
    names: set[str] = set(FINDINGS) | {NO_FINDING}
    for counts in by_split.values():
        names |= set(counts)
    rows = []
    for name in sorted(names, key=_label_order):
        cells = []
        for s in splits:
            n = by_split[s].get(name)
            cells.append({"split": s, "count": n, "share": _ratio(n, studies_in.get(s))})
        rows.append({"label": name, "cells": cells, "is_no_finding": name == NO_FINDING})
    return splits, rows


def _balancing_view(balancing: Balancing | None) -> dict[str, Any] | None:
    if balancing is None:
        return None
    before, after = balancing.counts_before, balancing.counts_after
    rows = [
        {"label": name, "before": before.get(name), "after": after.get(name), "ratio": _ratio(after.get(name), before.get(name))}
        for name in sorted(set(before) | set(after), key=_label_order)
    ]
    return {
        **balancing.model_dump(include={"preset", "seed", "n_rows_before", "n_rows_after"}),
        "rows": rows,
        "fig_before": figures.label_distribution_figure(before, title="Before balancing (training split)", xlabel="studies")
        if before
        else None,
        "fig_after": figures.label_distribution_figure(
            after, title="After balancing (training split)", xlabel="rows, copies included"
        )
        if after
        else None,
    }


def _proportion_view(table: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    categories = categories_in_order(table)
    rows = [{"split": s, "values": [table[s].get(c) for c in categories]} for s in sorted(table, key=_split_order)]
    return categories, rows


def _age_stats(ages_by_split: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    out = []
    for s in sorted(ages_by_split, key=_split_order):
        arr = ages_by_split[s]
        known = arr[np.isfinite(arr)]
        out.append(
            {
                "split": s,
                "n": int(known.size),
                "n_missing": int(arr.size - known.size),
                "median": float(np.median(known)) if known.size else None,
                "min": float(known.min()) if known.size else None,
                "max": float(known.max()) if known.size else None,
            }
        )
    return out


def _quarantine_view(entries: Sequence[QuarantineEntry], limit: int) -> dict[str, Any]:
    rows = [q.model_dump() for q in entries]
    reasons = [{"reason": r, "count": n, "share": n / len(rows)} for r, n in reason_counts(q["reason"] for q in rows)]
    shown = rows[:limit]
    return {
        "n": len(rows),
        "reasons": reasons,
        "rows": shown,
        "omitted": len(rows) - len(shown),
        "limit": limit,
        "has_source": any(r["source"] is not None for r in shown),
        "has_run": any(r["refresh_run_id"] is not None for r in shown),
        "has_created": any(r["created_at"] is not None for r in shown),
    }


def _figures(ctx: DatasetContext, age_stats: list[dict], has_sex: bool, has_view: bool) -> dict[str, str | None]:
    figs: dict[str, str | None] = {"cooccurrence": None, "ages": None, "sex": None, "view": None}
    if ctx.labels is not None and ctx.labels.size:
        figs["cooccurrence"] = figures.cooccurrence_figure(ctx.labels, ctx.findings)
    if any(a["n"] for a in age_stats):
        figs["ages"] = figures.age_histogram_figure(ctx.ages_by_split)
    if has_sex:
        figs["sex"] = figures.proportions_figure(ctx.sex_by_split, "Sex by split")
    if has_view:
        figs["view"] = figures.proportions_figure(ctx.view_by_split, "View position by split")
    return figs


def dataset_view(ctx: DatasetContext) -> dict[str, Any]:
    """The names ``dataset.html.j2`` renders, figures included."""
    splits = _split_view(ctx.split_counts)
    label_splits, label_rows = _label_table_view(ctx.label_counts_by_split, {r["split"]: r["n_studies"] for r in splits})
    sex_categories, sex_rows = _proportion_view(ctx.sex_by_split)
    view_categories, view_rows = _proportion_view(ctx.view_by_split)
    age_stats = _age_stats(ctx.ages_by_split)
    n_patients = ctx.n_patients
    if n_patients is None and splits and all(r["n_patients"] is not None for r in splits):
        n_patients = sum(int(r["n_patients"]) for r in splits)
    return {
        "title": ctx.title,
        "generated_at": ctx.generated_at,
        "source": ctx.source,
        "is_synthetic": "synth" in str(ctx.source or "").lower(),
        "refresh": None if ctx.refresh is None else ctx.refresh.model_dump(),
        "splits": splits,
        "n_studies": sum(int(r["n_studies"] or 0) for r in splits),
        "n_patients": n_patients,
        "label_splits": label_splits,
        "label_rows": label_rows,
        "balancing": _balancing_view(ctx.balancing),
        "n_labelled_rows": None if ctx.labels is None else int(ctx.labels.shape[0]),
        "age_stats": age_stats,
        "sex_categories": sex_categories,
        "sex_rows": sex_rows,
        "view_categories": view_categories,
        "view_rows": view_rows,
        "quarantine": _quarantine_view(ctx.quarantined, ctx.quarantine_limit),
        "figs": _figures(ctx, age_stats, bool(sex_rows and sex_categories), bool(view_rows and view_categories)),
    }


def render_dataset_html(context: DatasetContext) -> str:
    """The dataset report as an HTML string (see :func:`render_dataset_report`)."""
    if not isinstance(context, DatasetContext):
        raise TypeError(f"expected a DatasetContext, got {type(context).__name__}")
    return render_template("dataset.html.j2", dataset_view(context))


def render_dataset_report(context: DatasetContext, out_path: str | Path) -> Path:
    """Render the dataset report of ``context`` to ``out_path`` (atomic write; folders created).
    Returns ``out_path``.

    Splits are shown train, val, test, then others by name; labels in FINDINGS order, then
    ``No Finding``; quarantined rows with a count per reason first. Images (each only when it
    has data): balancing before/after bar charts, co-occurrence heatmap, age histogram, sex and
    view-position bars.
    """
    return atomic_write_text(Path(out_path), render_dataset_html(context))
