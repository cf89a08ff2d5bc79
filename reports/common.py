"""Small helpers the report views share: finding order, counts per reason, categories in order."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from cxrmodel.findings import FINDING_INDEX
from reports.environment import EMPTY

__all__ = ["categories_in_order", "finding_order", "reason_counts"]


def finding_order(name: Any) -> tuple[int, str]:
    """Sort key: FINDINGS order, then any other name alphabetically."""
    return (FINDING_INDEX.get(str(name), len(FINDING_INDEX)), str(name))


def reason_counts(reasons: Iterable[str | None]) -> list[tuple[str, int]]:
    """``(reason, count)`` pairs, most common first, then by reason; a missing reason is ``'—'``."""
    counts = Counter(EMPTY if r is None else str(r) for r in reasons)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def categories_in_order(table: Mapping[Any, Mapping[Any, Any] | None]) -> list[str]:
    """The inner keys of ``table`` (group -> category -> value), as strings, in first-seen order."""
    categories: list[str] = []
    for row in table.values():
        for c in row or {}:
            if str(c) not in categories:
                categories.append(str(c))
    return categories
