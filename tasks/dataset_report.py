"""The dataset report: splits, labels, balancing, demographics and quarantined rows, as one HTML file."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from sqlalchemy import select

from cxrmodel.data.balancing import apply_balancing, label_counts, preset_steps
from cxrmodel.findings import FINDINGS
from db.engine import session_scope
from db.models import QuarantinedRow, RefreshRun, Study
from reports.render import render_dataset_report
from tasks.artifacts import in_prefect_run, publish_report_link
from tasks.common import labelled_frame

UNKNOWN = "unknown"
FRAME_COLUMNS = ("study_id", "study_key", "patient_id", "age", "sex", "view", "split", "image_path", *FINDINGS)


def _logger():
    return get_run_logger() if in_prefect_run() else logging.getLogger(__name__)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _studies(database_url: str) -> pd.DataFrame:
    """Active labelled studies (empty frame with the usual columns when there are none)."""
    try:
        frame = labelled_frame(database_url)
    except RuntimeError:  # labelled_frame refuses an empty database; the report still has quarantine to show
        return pd.DataFrame({c: pd.Series(dtype=object) for c in FRAME_COLUMNS})
    frame["split"] = frame["split"].fillna(UNKNOWN).astype(str)
    return frame


def _split_key(name: str) -> tuple[int, str]:
    order = ("train", "val", "test")
    return (order.index(name) if name in order else len(order), name)


def _proportions(frame: pd.DataFrame, column: str, splits: list[str]) -> dict[str, dict[str, float]]:
    """split -> {category: fraction of the split's studies}; missing values count as 'unknown'."""
    out: dict[str, dict[str, float]] = {}
    for s in splits:
        values = frame.loc[frame["split"] == s, column].fillna(UNKNOWN).astype(str).replace("", UNKNOWN)
        if values.empty:
            continue
        shares = values.value_counts(normalize=True)
        out[s] = {str(k): float(shares[k]) for k in sorted(shares.index, key=lambda k: (k == UNKNOWN, k))}
    return out


def dataset_context(
    database_url: str, balancing: str = "seed004", refresh_run_id: int | None = None, balancing_seed: int = 0
) -> dict[str, Any]:
    """The :func:`reports.render.render_dataset_report` context, read from the database."""
    steps = preset_steps(balancing)  # unknown preset: fail before any work ('none' is [])
    refresh = None
    with session_scope(database_url) as session:
        if refresh_run_id is not None:
            run = session.get(RefreshRun, refresh_run_id)
            if run is None:
                raise ValueError(f"no refresh run with id {refresh_run_id}")
            refresh = {"id": run.id, "n_rows": run.n_rows, "n_added": run.n_added, "n_updated": run.n_updated,
                       "n_unchanged": run.n_unchanged, "n_quarantined": run.n_quarantined, "status": run.status,
                       "started_at": _iso(run.started_at), "finished_at": _iso(run.finished_at),
                       "source": run.source, "location": run.location}
        sources = sorted(
            s for s in session.scalars(
                select(Study.source).where(Study.labelled.is_(True), Study.status == "active").distinct()
            ) if s
        )
        quarantined = [
            {"row_key": q.row_key, "row_number": q.row_number, "reason": q.reason, "source": q.source,
             "refresh_run_id": q.refresh_run_id, "created_at": _iso(q.created_at)}
            for q in session.scalars(
                select(QuarantinedRow).order_by(QuarantinedRow.created_at.desc(), QuarantinedRow.id.desc())
            )
        ]

    frame = _studies(database_url)
    splits = sorted(frame["split"].unique(), key=_split_key)
    split_counts = {
        s: {"n_studies": int((frame["split"] == s).sum()),
            "n_patients": int(frame.loc[frame["split"] == s, "patient_id"].nunique())}
        for s in splits
    }
    label_counts_by_split = {s: label_counts(frame[frame["split"] == s]) for s in splits}

    train = frame[frame["split"] == "train"]
    balancing_info = None
    if len(train):
        result = apply_balancing(train[list(FINDINGS)], steps, seed=balancing_seed)
        balancing_info = {"preset": balancing, "seed": balancing_seed, "counts_before": result.counts_before,
                          "counts_after": result.counts_after, "n_rows_before": int(len(train)),
                          "n_rows_after": int(len(result.frame))}

    source = ", ".join(sources) if sources else (refresh or {}).get("source")
    return {
        "title": f"Dataset report — refresh run {refresh_run_id}" if refresh_run_id is not None else "Dataset report — latest",
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "refresh": refresh,
        "split_counts": split_counts,
        "n_patients": int(frame["patient_id"].nunique()),
        "label_counts_by_split": label_counts_by_split,
        "balancing": balancing_info,
        "labels": frame[list(FINDINGS)].to_numpy(dtype=np.int64),
        "ages_by_split": {s: pd.to_numeric(frame.loc[frame["split"] == s, "age"], errors="coerce").to_numpy(dtype=float)
                          for s in splits},
        "sex_by_split": _proportions(frame, "sex", splits),
        "view_by_split": _proportions(frame, "view", splits),
        "quarantined": quarantined,
    }


@task(name="render-dataset-report")
def render_dataset(
    database_url: str,
    home: Path,
    balancing: str = "seed004",
    refresh_run_id: int | None = None,
    balancing_seed: int = 0,
) -> str:
    """Write the self-contained HTML dataset report; return its path.

    Studies and labels are the active labelled studies; ``balancing`` names a preset of
    :mod:`cxrmodel.data.balancing` (or ``'none'``) applied to the training rows with
    ``balancing_seed`` to show label counts before and after; every quarantined row is
    listed, newest first; with ``refresh_run_id`` the run's counts are shown too. The file is
    ``home/reports/dataset_<refresh_run_id or 'latest'>.html``. The link artifact
    ``cxr-dataset-report`` is published only inside a Prefect flow or task run, so calling
    ``render_dataset.fn(...)`` outside Prefect needs no API server.
    """
    context = dataset_context(database_url, balancing, refresh_run_id, balancing_seed)
    out = Path(home) / "reports" / f"dataset_{refresh_run_id or 'latest'}.html"
    render_dataset_report(context, out)
    publish_report_link("cxr-dataset-report", out, Path(home) / "reports",
                        description="HTML dataset report: splits, labels, balancing, quarantined rows")
    _logger().info("dataset report: %s", out)
    return str(out)
