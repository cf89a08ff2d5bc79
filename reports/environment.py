"""The Jinja environment of every report, its filters, and the research-use disclaimer.

Templates (``reports/templates``) are autoescaped and strict: a value from the database is
always text, never markup, and a name the template uses but the view does not give is an
error rather than an empty string.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

__all__ = ["DISCLAIMER", "EMPTY", "TEMPLATES_DIR", "env", "finite_or_none", "fmt", "fmt_ci", "pct", "render_template"]

TEMPLATES_DIR = Path(__file__).parent / "templates"

DISCLAIMER = (
    "Research use only — not a medical device. "
    "These outputs have not been clinically validated and must not be used for diagnosis, "
    "triage or any treatment decision."
)

#: What a table cell shows for a missing or undefined value.
EMPTY = "—"


def finite_or_none(value: Any) -> float | None:
    """``value`` as a finite float; None for None, booleans, non-numbers, NaN and infinities."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt(value: Any, digits: int = 3) -> str:
    """Format a number for a table cell.

    ``None`` and non-finite floats give ``'—'``; booleans give ``'yes'``/``'no'``;
    integers (Python or numpy) get thousands separators (``12345 -> '12,345'``); other
    real numbers are shown with ``digits`` decimals (``0.12345 -> '0.123'``). Anything
    else is passed through ``str``.
    """
    if value is None:
        return EMPTY
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        v = float(value)
        if not math.isfinite(v):
            return EMPTY
        return f"{v:,.{digits}f}"
    return str(value)


def pct(value: Any, digits: int = 1) -> str:
    """A fraction as a percentage (``0.1234 -> '12.3%'``); ``None``/non-finite give ``'—'``."""
    if value is None or isinstance(value, bool):
        return EMPTY
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(v):
        return EMPTY
    return f"{100.0 * v:.{digits}f}%"


def fmt_ci(low: Any, high: Any, digits: int = 3) -> str:
    """A confidence interval as ``'0.781–0.843'``; ``'—'`` unless both ends are finite numbers."""
    lo, hi = finite_or_none(low), finite_or_none(high)
    if lo is None or hi is None:
        return EMPTY
    return f"{lo:.{digits}f}–{hi:.{digits}f}"


def short_hash(value: Any, n: int = 12) -> str:
    """The first ``n`` characters of a hash, with an ellipsis when cut."""
    if value is None:
        return EMPTY
    s = str(value)
    return s if len(s) <= n else s[:n] + "…"


def markdown_cell(value: Any) -> str:
    """``value`` on one line with its pipes escaped: a Markdown table cell."""
    return " ".join(str(value).split()).replace("|", "\\|")


env = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=select_autoescape(["html", "j2", "html.j2"], default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters["fmt"] = fmt
env.filters["pct"] = pct
env.filters["short_hash"] = short_hash
env.filters["ci"] = fmt_ci
env.filters["md"] = markdown_cell
env.globals["DISCLAIMER"] = DISCLAIMER


def render_template(name: str, view: dict[str, Any]) -> str:
    """Render the template ``name`` with the names of ``view``."""
    return env.get_template(name).render(**view)
