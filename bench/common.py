"""Shared helpers for the benchmark scripts: each prints JSON result lines that
``bench/run_all.py`` collects into one table."""

from __future__ import annotations

import json
import sys


def emit(figure: str, value: float | None, unit: str, reference: str, ok: bool | None = None) -> None:
    """One result line: the figure, its value, and what it is compared with."""
    print("BENCH " + json.dumps({"figure": figure, "value": value, "unit": unit, "reference": reference, "ok": ok}), flush=True)
    sys.stdout.flush()
