"""The dataset report: splits, labels, balancing, demographics and quarantined rows, as one HTML
file. Read with :mod:`db.report_queries`, balanced with :mod:`cxrmodel.data.balancing`, rendered
with :mod:`reports`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task

from cxrmodel.data.balancing import apply_balancing, label_counts, preset_steps
from cxrmodel.findings import FINDINGS
from cxrmodel.layout import HomeLayout
from db import report_queries
from db.engine import session_scope
from db.entities import RefreshRunInfo
from reports import DatasetContext, render_dataset_report
from tasks.artifacts import publish_report_link
from tasks.common import run_logger

UNKNOWN = "unknown"
SPLIT_ORDER = ("train", "val", "test")
FRAME_COLUMNS = ("study_id", "study_key", "patient_id", "age", "sex", "view", "split", "image_path", *FINDINGS)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def _studies(frame: pd.DataFrame | None) -> pd.DataFrame:
    """The labelled studies with every split named (an empty frame with the usual columns when there are none)."""
    if frame is None:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in FRAME_COLUMNS})
    frame = frame.copy()
    frame["split"] = frame["split"].fillna(UNKNOWN).astype(str)
    return frame


def _split_key(name: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(name) if name in SPLIT_ORDER else len(SPLIT_ORDER), name)


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


def _refresh(run: RefreshRunInfo | None) -> dict | None:
    if run is None:
        return None
    return {
        "id": run.id,
        "n_rows": run.n_rows,
        "n_added": run.n_added,
        "n_updated": run.n_updated,
        "n_unchanged": run.n_unchanged,
        "n_quarantined": run.n_quarantined,
        "status": run.status,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "source": run.source,
        "location": run.location,
    }


def _balancing(train: pd.DataFrame, preset: str, steps: list, seed: int) -> dict | None:
    """Training label counts before and after the preset's steps (None without training studies)."""
    if not len(train):
        return None
    result = apply_balancing(train[list(FINDINGS)], steps, seed=seed)
    return {
        "preset": preset,
        "seed": seed,
        "counts_before": result.counts_before,
        "counts_after": result.counts_after,
        "n_rows_before": len(train),
        "n_rows_after": len(result.frame),
    }


def dataset_context(
    database_url: str, balancing: str = "seed004", refresh_run_id: int | None = None, balancing_seed: int = 0
) -> DatasetContext:
    """The dataset report's context, read from the database."""
    steps = preset_steps(balancing)  # unknown preset: fail before any work ('none' is [])
    with session_scope(database_url) as session:
        data = report_queries.dataset_report_data(session, refresh_run_id)
    frame = _studies(data.studies)
    splits = sorted(frame["split"].unique(), key=_split_key)
    in_split = {s: frame[frame["split"] == s] for s in splits}
    refresh = _refresh(data.refresh)
    return DatasetContext(
        title=f"Dataset report — refresh run {refresh_run_id}" if refresh_run_id is not None else "Dataset report — latest",
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        source=", ".join(data.sources) if data.sources else (refresh or {}).get("source"),
        refresh=refresh,
        split_counts={
            s: {"n_studies": len(rows), "n_patients": int(rows["patient_id"].nunique())} for s, rows in in_split.items()
        },
        n_patients=int(frame["patient_id"].nunique()),
        label_counts_by_split={s: label_counts(rows) for s, rows in in_split.items()},
        balancing=_balancing(in_split.get("train", frame.iloc[:0]), balancing, steps, balancing_seed),
        labels=frame[list(FINDINGS)].to_numpy(dtype=np.int64),
        ages_by_split={s: pd.to_numeric(rows["age"], errors="coerce").to_numpy(dtype=float) for s, rows in in_split.items()},
        sex_by_split=_proportions(frame, "sex", splits),
        view_by_split=_proportions(frame, "view", splits),
        quarantined=[
            {
                "row_key": q.row_key,
                "row_number": q.row_number,
                "reason": q.reason,
                "source": q.source,
                "refresh_run_id": q.refresh_run_id,
                "created_at": _iso(q.created_at),
            }
            for q in data.quarantined
        ],
    )


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
    out = HomeLayout(Path(home)).reports / f"dataset_{refresh_run_id or 'latest'}.html"
    render_dataset_report(context, out)
    publish_report_link(
        "cxr-dataset-report",
        out,
        HomeLayout(Path(home)).reports,
        description="HTML dataset report: splits, labels, balancing, quarantined rows",
    )
    run_logger().info("dataset report: %s", out)
    return str(out)
