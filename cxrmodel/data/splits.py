"""Patient-grouped, label-stratified train/val/test splits (no patient in two splits).

Stratification uses one label per image: its **rarest** finding (by frequency in the frame
being split), or "no finding". Label classes with fewer images than folds are pooled into
one "other" class so that scikit-learn's :class:`~sklearn.model_selection.StratifiedGroupKFold`
can honour every class.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from cxrmodel.findings import FINDINGS, NUM_FINDINGS

SPLITS = ("train", "val", "test")
OFFICIAL_TRAINVAL = "train_val_list.txt"
OFFICIAL_TEST = "test_list.txt"


def read_official_lists(root: str | os.PathLike[str]) -> dict[str, str] | None:
    """study_key -> ``'trainval'``/``'test'`` from NIH's ``train_val_list.txt`` and
    ``test_list.txt`` in ``root``; ``None`` unless both files exist.

    Raises ``ValueError`` if a key is listed in both files.
    """
    base = Path(root)
    trainval_file, test_file = base / OFFICIAL_TRAINVAL, base / OFFICIAL_TEST
    if not (trainval_file.is_file() and test_file.is_file()):
        return None

    def keys(path: Path) -> list[str]:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    out = {k: "trainval" for k in keys(trainval_file)}
    test_keys = keys(test_file)
    both = sorted(k for k in test_keys if k in out)
    if both:
        raise ValueError(f"{len(both)} key(s) in both official lists, e.g. {both[:5]}")
    out.update({k: "test" for k in test_keys})
    return out


def stratification_labels(df: pd.DataFrame, min_count: int = 1) -> np.ndarray:
    """One int label per row: index of its rarest finding in this frame, 14 for none.

    Labels held by fewer than ``min_count`` rows are pooled into ``-1``.
    """
    y = df[list(FINDINGS)].to_numpy(dtype=np.int64)
    freq = y.sum(axis=0)
    key = np.full(len(df), NUM_FINDINGS, dtype=np.int64)
    for j in np.argsort(-freq, kind="stable"):  # commonest first, so the rarest overwrites
        key[y[:, j] == 1] = j
    values, counts = np.unique(key, return_counts=True)
    rare = values[counts < min_count]
    key[np.isin(key, rare)] = -1
    return key


def _holdout(df: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of one fold of ``round(1/fraction)`` patient-grouped stratified folds.

    With fewer patients than folds, the number of folds drops to the number of patients
    (so the held-out share grows); with fewer than two patients nothing is held out.
    """
    mask = np.zeros(len(df), dtype=bool)
    if len(df) == 0 or fraction <= 0:
        return mask
    groups = df["patient_id"].astype(str).to_numpy()
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        return mask
    n_splits = min(max(2, round(1.0 / fraction)), n_groups)
    y = stratification_labels(df, min_count=n_splits)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        _, held = next(splitter.split(np.zeros(len(df)), y, groups))
    mask[held] = True
    return mask


def _check_frame(df: pd.DataFrame) -> None:
    missing = [c for c in ("patient_id", *FINDINGS) if c not in df.columns]
    if missing:
        raise ValueError(f"frame lacks column(s) needed for splitting: {', '.join(missing)}")
    if df["patient_id"].isna().any():
        raise ValueError("patient_id must be known for every row to split by patient")


def assign_splits(
    df: pd.DataFrame,
    val_fraction: float = 0.08,
    test_fraction: float = 0.20,
    seed: int = 0,
    official: Mapping[str, str] | None = None,
) -> pd.Series:
    """``'train'``/``'val'``/``'test'`` for each row, indexed like ``df``.

    Without ``official``: test is one fold of ``round(1/test_fraction)`` patient-grouped,
    stratified folds; val is one fold of ``round((1-test_fraction)/val_fraction)`` folds of
    the rest (so about ``val_fraction`` of all rows); deterministic for a given ``seed``.

    With ``official`` (from :func:`read_official_lists`, needs ``study_key``): listed test
    studies are the test split and val is carved out of trainval by patient. So that no
    patient spans two splits, every study of a patient with any officially-test study goes
    to test, and unlisted studies of a listed patient follow that patient. Studies of
    patients absent from both lists go through the grouped split above (test share
    ``test_fraction``), and their non-test part joins trainval before val is carved.
    """
    _check_frame(df)
    if not (0 < test_fraction < 1 and 0 < val_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"bad fractions: val={val_fraction}, test={test_fraction}")
    val_of_rest = val_fraction / (1.0 - test_fraction)
    patients = df["patient_id"].astype(str).to_numpy()

    if official is None:
        is_test = _holdout(df, test_fraction, seed)
    else:
        if "study_key" not in df.columns:
            raise ValueError("official lists need a study_key column")
        bad = {v for v in official.values() if v not in ("trainval", "test")}
        if bad:
            raise ValueError(f"official list values must be 'trainval' or 'test', got {sorted(bad)}")
        listed = df["study_key"].map(official).to_numpy(dtype=object)
        test_patients = set(patients[listed == "test"])
        listed_patients = set(patients[pd.notna(listed)])
        is_test = np.isin(patients, list(test_patients))
        unlisted = ~np.isin(patients, list(listed_patients))
        if unlisted.any():
            is_test[unlisted] = _holdout(df[unlisted], test_fraction, seed)

    rest = ~is_test
    is_val = np.zeros(len(df), dtype=bool)
    is_val[rest] = _holdout(df[rest], val_of_rest, seed)
    labels = np.where(is_test, "test", np.where(is_val, "val", "train"))
    return pd.Series(labels, index=df.index, name="split", dtype=object)


def assert_no_patient_leak(df: pd.DataFrame, split_col: str = "split") -> None:
    """Raise ``AssertionError`` naming the patients whose studies span several splits."""
    per_patient = df.groupby(df["patient_id"].astype(str))[split_col].agg(lambda s: sorted(set(s)))
    leaking = per_patient[per_patient.map(len) > 1]
    if len(leaking):
        shown = ", ".join(f"{pid} {splits}" for pid, splits in leaking.head(10).items())
        more = f" (and {len(leaking) - 10} more)" if len(leaking) > 10 else ""
        raise AssertionError(f"{len(leaking)} patient(s) in more than one split: {shown}{more}")


def patient_folds(df: pd.DataFrame, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index (``0 .. n_folds-1``) of each row: patient-grouped, stratified by rarest finding.

    Every study of a patient lands in the same fold, so a fold's held-out part never shares a
    patient with the rest. Raises ``ValueError`` with fewer patients than folds.
    """
    _check_frame(df)
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    groups = df["patient_id"].astype(str).to_numpy()
    n_groups = len(np.unique(groups))
    if n_groups < n_folds:
        raise ValueError(f"{n_groups} patient(s) cannot fill {n_folds} folds")
    y = stratification_labels(df, min_count=n_folds)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.full(len(df), -1, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for index, (_, held) in enumerate(splitter.split(np.zeros(len(df)), y, groups)):
            folds[held] = index
    return folds
