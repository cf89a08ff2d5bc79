"""Seed 004's class balancing as named presets of :class:`~cxrmodel.config.BalancingStep`.

Apply to the **training split only**. Step kinds:

* ``keep_fraction_only``: keep ``fraction`` of the rows whose only label is ``finding``
  (``'No Finding'``: rows with no finding); every other row is untouched.
* ``keep_fraction_any``: keep ``fraction`` of the rows that have ``finding`` at all
  (``'No Finding'``: rows with no finding).
* ``flip_duplicate_under``: for each of the 14 findings with fewer than ``count`` rows,
  add one horizontally-flipped duplicate of each row that has it; a row that has several
  such findings is duplicated once. The duplicate's ``flip`` is the negation of its
  source's (``True`` for a duplicate of an original row).
* ``replicate_to``: for each finding with fewer than ``count`` (and more than zero) rows,
  rarest first by the counts at the start of the step, draw rows that have it, with
  replacement, until its count is exactly ``count`` (counts are re-read before each
  finding, as earlier copies can raise them).

Kept rows are chosen as ``round(fraction * n)`` rows without replacement; row order is
kept and copies are appended. Everything is drawn from one ``numpy`` Generator seeded
once, so a result is reproducible from (frame, steps, seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrmodel.config import BalancingStep
from cxrmodel.findings import FINDINGS, NO_FINDING

PRESETS: dict[str, list[BalancingStep]] = {
    "seed004": [
        BalancingStep(kind="keep_fraction_only", finding=NO_FINDING, fraction=0.10),
        BalancingStep(kind="keep_fraction_only", finding="Infiltration", fraction=0.15),
        BalancingStep(kind="keep_fraction_only", finding="Effusion", fraction=0.50),
        BalancingStep(kind="keep_fraction_only", finding="Atelectasis", fraction=0.50),
        BalancingStep(kind="flip_duplicate_under", count=3000),
        BalancingStep(kind="replicate_to", count=1500),
        BalancingStep(kind="keep_fraction_any", finding=NO_FINDING, fraction=0.25),
        BalancingStep(kind="keep_fraction_any", finding="Atelectasis", fraction=0.50),
    ],
    # For the 2,000-study synthetic set (~1,400 training rows, rare findings a handful).
    "demo": [
        BalancingStep(kind="keep_fraction_only", finding=NO_FINDING, fraction=0.35),
        BalancingStep(kind="flip_duplicate_under", count=150),
        BalancingStep(kind="replicate_to", count=80),
    ],
    "none": [],
}


@dataclass
class BalancingResult:
    """Balanced frame (fresh RangeIndex, boolean ``flip`` column) and label counts
    (14 findings plus ``'No Finding'``) before and after."""

    frame: pd.DataFrame
    counts_before: dict[str, int]
    counts_after: dict[str, int]


def preset_steps(name: str) -> list[BalancingStep]:
    """The steps of a named preset; ``ValueError`` listing the known names otherwise."""
    try:
        return list(PRESETS[name])
    except KeyError:
        raise ValueError(f"unknown balancing preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None


def label_counts(df: pd.DataFrame) -> dict[str, int]:
    """Rows having each finding, plus ``'No Finding'`` (rows with none)."""
    y = df[list(FINDINGS)].to_numpy(dtype=np.int64)
    counts = {name: int(n) for name, n in zip(FINDINGS, y.sum(axis=0), strict=True)}
    counts[NO_FINDING] = int((y.sum(axis=1) == 0).sum())
    return counts


def _label_array(df: pd.DataFrame) -> np.ndarray:
    return df[list(FINDINGS)].to_numpy(dtype=np.int64) > 0


def _rows_with(df: pd.DataFrame, finding: str, only: bool) -> np.ndarray:
    """Boolean mask: rows with ``finding`` (only it, if ``only``); No Finding = no labels."""
    y = _label_array(df)
    per_row = y.sum(axis=1)
    if finding == NO_FINDING:
        return per_row == 0
    has = y[:, FINDINGS.index(finding)]
    return has & (per_row == 1) if only else has


def _keep_fraction(df: pd.DataFrame, mask: np.ndarray, fraction: float, rng: np.random.Generator) -> pd.DataFrame:
    """Keep ``round(fraction * mask.sum())`` of the masked rows, all others, in order."""
    positions = np.flatnonzero(mask)
    n_keep = int(round(fraction * len(positions)))
    dropped = rng.choice(positions, size=len(positions) - n_keep, replace=False)
    keep = np.ones(len(df), dtype=bool)
    keep[dropped] = False
    return df[keep]


def _flip_duplicate_under(df: pd.DataFrame, count: int) -> pd.DataFrame:
    y = _label_array(df)
    rare = y.sum(axis=0) < count
    chosen = (y & rare).any(axis=1)
    if not chosen.any():
        return df
    copies = df[chosen].copy()
    copies["flip"] = ~copies["flip"].astype(bool)
    return pd.concat([df, copies])


def _replicate_to(df: pd.DataFrame, count: int, rng: np.random.Generator) -> pd.DataFrame:
    start = _label_array(df).sum(axis=0)
    order = np.argsort(start, kind="stable")  # rarest first, ties in FINDINGS order
    for j in order:
        y = _label_array(df)
        have = int(y[:, j].sum())
        if have == 0 or have >= count:
            continue
        picks = rng.choice(np.flatnonzero(y[:, j]), size=count - have, replace=True)
        df = pd.concat([df, df.iloc[picks]])
    return df


def apply_step(df: pd.DataFrame, step: BalancingStep, rng: np.random.Generator) -> pd.DataFrame:
    """One balancing step on a frame that has the 14 finding columns and ``flip``."""
    if step.kind in ("keep_fraction_only", "keep_fraction_any"):
        mask = _rows_with(df, str(step.finding), only=step.kind == "keep_fraction_only")
        return _keep_fraction(df, mask, float(step.fraction), rng)
    if step.kind == "flip_duplicate_under":
        return _flip_duplicate_under(df, int(step.count))
    if step.kind == "replicate_to":
        return _replicate_to(df, int(step.count), rng)
    raise ValueError(f"unknown balancing step kind {step.kind!r}")


def apply_balancing(df: pd.DataFrame, steps: list[BalancingStep], seed: int = 0) -> BalancingResult:
    """Run ``steps`` in order on a training frame; deterministic for a given ``seed``.

    ``df`` needs the 14 finding columns; a boolean ``flip`` column is added (``False``) if
    absent. The input frame is not modified.
    """
    missing = [f for f in FINDINGS if f not in df.columns]
    if missing:
        raise ValueError(f"frame lacks finding column(s): {', '.join(missing)}")
    frame = df.copy()
    frame["flip"] = frame["flip"].astype(bool) if "flip" in frame.columns else False
    before = label_counts(frame)
    rng = np.random.default_rng(seed)
    for step in steps:
        frame = apply_step(frame, step, rng)
    frame = frame.reset_index(drop=True)
    return BalancingResult(frame=frame, counts_before=before, counts_after=label_counts(frame))
