"""The subgroup section of the evaluation report (and of the model card): metrics per sex, age
band and view position, with the best-to-worst gap of each attribute."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cxrmodel.evaluation.subgroups import AGE_BANDS, UNKNOWN, subgroup_gaps
from reports.contexts import SubgroupMetrics
from reports.environment import finite_or_none

__all__ = ["SUBGROUP_ATTRIBUTES", "SUBGROUP_GAP_WARNING", "SUBGROUP_METRIC_KEYS", "subgroup_rows", "subgroup_view"]

#: A subgroup macro-AUROC gap (best group minus worst group of one attribute) above this is flagged.
SUBGROUP_GAP_WARNING = 0.05
SUBGROUP_ATTRIBUTES = {"sex": "Sex", "age_band": "Age band", "view": "View position"}
SUBGROUP_METRIC_KEYS = ("macro_auroc", "macro_f1", "micro_f1", "exact_match", "hamming_loss", "mean_brier", "mean_ece")


def _group_order(attribute: str, group: str) -> tuple[int, int, str]:
    """Age bands in age order, other groups by name, the unknown group last."""
    if group == UNKNOWN:
        return (2, 0, group)
    if attribute == "age_band" and group in AGE_BANDS:
        return (0, AGE_BANDS.index(group), group)
    return (1, 0, group)


def subgroup_rows(rows: Sequence[SubgroupMetrics | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows as dicts with every :class:`~reports.contexts.SubgroupMetrics` field; a stored row's
    ``group_name`` is read as ``group``."""
    return [SubgroupMetrics.model_validate(r).model_dump() for r in rows]


def subgroup_view(
    rows: Sequence[SubgroupMetrics | Mapping[str, Any]], gap_warning: float = SUBGROUP_GAP_WARNING
) -> dict[str, Any]:
    """Subgroup rows grouped by attribute (sex, age band, view first, then others by name), each
    attribute with the gap between its best and worst group in macro-AUROC and macro-F1
    (:func:`cxrmodel.evaluation.subgroups.subgroup_gaps`) and ``warn`` when the AUROC gap exceeds
    ``gap_warning``; ``warnings`` lists the attributes that warn."""
    norm = subgroup_rows(rows)
    order = list(SUBGROUP_ATTRIBUTES) + sorted({r["attribute"] for r in norm} - set(SUBGROUP_ATTRIBUTES))
    gaps_auroc = subgroup_gaps(norm, "macro_auroc") if norm else {}
    gaps_f1 = subgroup_gaps(norm, "macro_f1") if norm else {}
    attributes = []
    for attribute in order:
        members = sorted((r for r in norm if r["attribute"] == attribute), key=lambda r: _group_order(attribute, r["group"]))
        if not members:
            continue
        scored = [r for r in members if finite_or_none(r["macro_auroc"]) is not None]
        best = max(scored, key=lambda r: r["macro_auroc"])["group"] if scored else None
        worst = min(scored, key=lambda r: r["macro_auroc"])["group"] if scored else None
        gap = gaps_auroc.get(attribute)
        attributes.append(
            {
                "attribute": attribute,
                "label": SUBGROUP_ATTRIBUTES.get(attribute, attribute.replace("_", " ")),
                "rows": members,
                "n_scored": len(scored),
                "best": best,
                "worst": worst,
                "gap_auroc": gap,
                "gap_f1": gaps_f1.get(attribute),
                "warn": gap is not None and gap > gap_warning,
            }
        )
    return {
        "attributes": attributes,
        "warnings": [a for a in attributes if a["warn"]],
        "gap_warning": gap_warning,
        "any_without_metrics": any(finite_or_none(r["macro_auroc"]) is None for r in norm),
    }
