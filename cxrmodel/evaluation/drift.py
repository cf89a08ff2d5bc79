"""The drift rule of the nightly scoring report: does a finding's flag rate diverge from its
training prevalence?

A monitoring policy over counts and rates, kept apart from the report that shows it so that it
can be read, tested and changed on its own.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

__all__ = ["DRIFT_MIN_COUNT", "DRIFT_RATIO", "DriftStatus", "drift_status"]

#: A flag rate at least this many times, or at most one over this many times, the training
#: prevalence diverges.
DRIFT_RATIO = 2.0
#: ... but only with at least this many flagged or expected studies, so that a handful of
#: studies cannot raise it.
DRIFT_MIN_COUNT = 5


class DriftStatus(NamedTuple):
    """``ratio``: flag rate over training prevalence (None when it is undefined); ``drift``:
    whether the rule fires."""

    ratio: float | None
    drift: bool


def _known(value: object, name: str, *, upper: float = math.inf) -> float | None:
    """``value`` as a float, None when unknown (None or NaN); TypeError for a non-number,
    ValueError outside ``[0, upper]``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number or None; got {value!r}")
    v = float(value)
    if math.isnan(v):
        return None
    if not 0.0 <= v <= upper:
        raise ValueError(f"{name} must lie in [0, {upper:g}]; got {v!r}")
    return v


def drift_status(
    n_flagged: float | None,
    flag_rate: float | None,
    prevalence: float | None,
    n_scored: float | None = None,
    *,
    ratio_limit: float = DRIFT_RATIO,
    min_count: float = DRIFT_MIN_COUNT,
) -> DriftStatus:
    """Apply the drift rule to one finding of one scoring run.

    ``n_flagged`` studies were flagged for the finding out of ``n_scored`` scored, a
    ``flag_rate`` (a fraction); ``prevalence`` is its fraction of positives in the training
    split. ``ratio = flag_rate / prevalence``, and the finding drifts when
    ``ratio >= ratio_limit`` or ``ratio <= 1 / ratio_limit`` while at least ``min_count``
    studies are flagged or expected (``n_scored * prevalence``; without ``n_scored`` the flags
    alone count). A finding never seen in training (prevalence 0) has no ratio and drifts once
    ``min_count`` studies are flagged. An unknown rate or prevalence gives ``(None, False)``.

    None and NaN mean unknown. Raises TypeError for a value that is not a real number (booleans
    included), and ValueError for a negative count, a rate outside [0, 1], more flagged than
    scored studies, or ``ratio_limit <= 1``.
    """
    if not ratio_limit > 1.0:
        raise ValueError(f"ratio_limit must be greater than 1; got {ratio_limit!r}")
    flagged = _known(n_flagged, "n_flagged")
    rate = _known(flag_rate, "flag_rate", upper=1.0)
    prev = _known(prevalence, "prevalence", upper=1.0)
    scored = _known(n_scored, "n_scored")
    if flagged is not None and scored is not None and flagged > scored:
        raise ValueError(f"n_flagged ({flagged:g}) exceeds n_scored ({scored:g})")
    if rate is None or prev is None:
        return DriftStatus(None, False)
    flags = flagged or 0.0
    if prev == 0.0:
        return DriftStatus(None, flags >= min_count)
    expected = scored * prev if scored is not None else 0.0
    ratio = rate / prev
    diverges = ratio >= ratio_limit or ratio <= 1.0 / ratio_limit
    return DriftStatus(ratio, diverges and max(flags, expected) >= min_count)
