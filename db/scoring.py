"""Scoring runs: the plan of a night (champion, thresholds, pending studies), predictions and
failures committed batch by batch with the run's counts, and the run's summary.

A pending study is an active, unlabelled study with no prediction from the champion, whoever
inserted it (the refresh flow or another system writing to ``studies``). Counts are SQL
increments committed with the batch they count, so parallel chunks never lose an update.
Every function takes an open session and leaves the transaction to the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import and_, bindparam, case, delete, exists, func, select, update
from sqlalchemy.orm import Session

from cxrmodel.findings import FINDINGS
from db import claims, runs, validation
from db.entities import ScoringRunInfo, StudyInfo
from db.models import ModelVersion, Prediction, ScoringClaim, ScoringFailure, ScoringRun, Study, utcnow
from db.registry import champion
from db.statuses import ScoringStatus, StudyStatus
from db.studies import SLICE
from db.thresholds import active_threshold_set
from db.upsert import upsert

#: Failed scoring tries after which a study is ``failed`` and skipped until its file changes.
DEFAULT_MAX_ATTEMPTS = 3


def _pending(stmt, model_version_id: int, limit: int | None):
    """``stmt`` restricted to the pending studies of ``model_version_id``, by id: active (a
    ``failed`` study is not), unlabelled, no prediction from it, not claimed by a live run."""
    scored = exists().where(and_(Prediction.study_id == Study.id, Prediction.model_version_id == model_version_id))
    stmt = stmt.where(
        Study.labelled.is_(False), Study.status == StudyStatus.ACTIVE, ~scored, ~claims.claimed_by_a_live_run()
    ).order_by(Study.id)
    return stmt if limit is None else stmt.limit(limit)


def studies_to_score(session: Session, model_version_id: int, limit: int | None = None) -> list[StudyInfo]:
    """Active unlabelled studies with no prediction from ``model_version_id``."""
    return [StudyInfo.from_row(s) for s in session.scalars(_pending(select(Study), model_version_id, limit))]


def study_ids_to_score(session: Session, model_version_id: int, limit: int | None = None) -> list[int]:
    """The ids of :func:`studies_to_score`, in the same order."""
    return list(session.scalars(_pending(select(Study.id), model_version_id, limit)))


def studies_by_id(session: Session, ids: Sequence[int]) -> list[StudyInfo]:
    """The studies with these ids, in the order given (ids that no longer exist are left out)."""
    found: dict[int, StudyInfo] = {}
    for start in range(0, len(ids), SLICE):
        found.update(
            (s.id, StudyInfo.from_row(s)) for s in session.scalars(select(Study).where(Study.id.in_(ids[start : start + SLICE])))
        )
    return [found[i] for i in ids if i in found]


# --- runs -----------------------------------------------------------------------------------------


def start_scoring_run(session: Session, **fields) -> ScoringRunInfo:
    """A ``running`` run (``model_version_id``, ``threshold_set_id``, ``n_candidates``, ``flow_run_id``), heart beating."""
    run = ScoringRun(status=ScoringStatus.RUNNING, heartbeat_at=utcnow(), **fields)
    session.add(run)
    session.flush()
    return ScoringRunInfo.from_row(run)


def scoring_run(session: Session, scoring_run_id: int) -> ScoringRunInfo | None:
    run = session.get(ScoringRun, scoring_run_id)
    return ScoringRunInfo.from_row(run) if run is not None else None


def abandon_stale_scoring_runs(session: Session, stale_after: timedelta) -> list[int]:
    """Mark ``abandoned`` every ``running`` run whose heartbeat (or start) is older than
    ``stale_after`` (:func:`db.runs.expire_stale_runs`) and release its claims. Returns their ids."""
    ids = [run_id for (run_id,) in runs.expire_stale_runs(session, ScoringRun, stale_after)]
    for start in range(0, len(ids), SLICE):
        session.execute(delete(ScoringClaim).where(ScoringClaim.scoring_run_id.in_(ids[start : start + SLICE])))
    return ids


def abandon_runs_of_gone_processes(session: Session, host: str, is_alive: Callable[[int], bool]) -> list[int]:
    """Mark ``abandoned`` every ``running`` batch run planned on ``host`` by a process that
    ``is_alive`` says is gone, and release its claims: its studies are pending again at once.
    Returns their ids."""
    candidates = session.execute(
        select(ScoringRun.id, ScoringRun.pid).where(
            ScoringRun.status == ScoringStatus.RUNNING, ScoringRun.host == host, ScoringRun.pid.is_not(None)
        )
    ).all()
    gone = sorted(run_id for run_id, pid in candidates if not is_alive(pid))
    if not gone:
        return []
    reason = f"its process on {host} is gone (killed or crashed) before it closed the run"
    closed = session.scalars(
        update(ScoringRun)
        .where(ScoringRun.id.in_(gone), ScoringRun.status == ScoringStatus.RUNNING)
        .values(status=ScoringStatus.ABANDONED, finished_at=utcnow(), error=reason)
        .returning(ScoringRun.id)
    ).all()
    session.execute(delete(ScoringClaim).where(ScoringClaim.scoring_run_id.in_(list(closed))))
    return sorted(closed)


def fail_scoring_run(session: Session, scoring_run_id: int, reason: str) -> bool:
    """Mark a ``running`` run ``failed`` with ``reason`` and release its claims (what it
    committed stays). Returns whether it was still running."""
    reason = reason if len(reason) <= 2000 else reason[:1997] + "..."
    closed = session.execute(
        update(ScoringRun)
        .where(ScoringRun.id == scoring_run_id, ScoringRun.status == ScoringStatus.RUNNING)
        .values(status=ScoringStatus.FAILED, finished_at=utcnow(), error=reason.replace("\x00", ""))
    ).rowcount
    claims.release(session, scoring_run_id)
    return bool(closed)


def add_scoring_counts(session: Session, scoring_run_id: int, scored: int = 0, failed: int = 0) -> None:
    """Add to a run's counts and beat its heart with one ``UPDATE ... SET n = n + k`` (safe when
    chunks of the run commit in parallel from several processes; commits with the batch it counts)."""
    session.execute(
        update(ScoringRun)
        .where(ScoringRun.id == scoring_run_id)
        .values(n_scored=ScoringRun.n_scored + scored, n_failed=ScoringRun.n_failed + failed, heartbeat_at=utcnow())
    )


def finish_scoring_run(session: Session, scoring_run_id: int, status: ScoringStatus = ScoringStatus.COMPLETED) -> ScoringRunInfo:
    """End a run. A completed run's candidates that it neither scored nor failed were skipped
    (an overlapping run scored them first): ``n_skipped`` is the difference."""
    run = session.get(ScoringRun, scoring_run_id)
    run.status, run.finished_at = status, utcnow()
    if status == ScoringStatus.COMPLETED:
        run.n_skipped = run.n_candidates - run.n_scored - run.n_failed
    claims.release(session, scoring_run_id)
    session.flush()
    return ScoringRunInfo.from_row(run)


# --- the plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoringPlan:
    """What a night's scoring run will do: the run, the model and its thresholds, the chunks."""

    scoring_run_id: int
    model_version_id: int
    model_name: str
    threshold_set_id: int
    thresholds: tuple[float, ...]  # in FINDINGS order
    chunks: tuple[tuple[int, ...], ...]  # study ids
    #: A study failing this many tries (since its file last changed) becomes ``failed``.
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    #: How long a claim on a study lasts without a committed batch to renew it.
    lease: timedelta = timedelta(hours=1)

    @property
    def n_candidates(self) -> int:
        return sum(len(c) for c in self.chunks)


def plan_scoring_run(
    session: Session,
    chunk_size: int,
    limit: int | None = None,
    stale_after: timedelta = timedelta(hours=1),
    flow_run_id: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    owner: tuple[str, int] | None = None,
    is_alive: Callable[[int], bool] | None = None,
) -> tuple[ScoringPlan, list[int]]:
    """Abandon the stale runs, then start a run of the champion with its active threshold set
    over every pending study (at most ``limit``) in chunks of ``chunk_size``. Returns the plan
    and the ids of the runs marked abandoned. Claims last ``stale_after`` (a run's heartbeat
    and its leases end together). With ``owner`` (host, pid) the run records its process, and
    with ``is_alive`` the runs of this host whose process is gone are abandoned first, whatever
    their heartbeat."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be positive, got {max_attempts}")
    abandoned = abandon_stale_scoring_runs(session, stale_after)
    if owner is not None and is_alive is not None:
        abandoned = sorted({*abandoned, *abandon_runs_of_gone_processes(session, owner[0], is_alive)})
    current = champion(session)
    if current is None:
        raise RuntimeError("no champion model version: train, evaluate and promote one first")
    tset = active_threshold_set(session, current.id)
    if tset is None:
        raise RuntimeError(f"champion {current.name} has no active threshold set")
    pending = study_ids_to_score(session, current.id, limit=limit)
    run = start_scoring_run(
        session,
        model_version_id=current.id,
        threshold_set_id=tset.id,
        flow_run_id=flow_run_id,
        n_candidates=len(pending),
        host=owner[0] if owner else None,
        pid=owner[1] if owner else None,
    )
    plan = ScoringPlan(
        scoring_run_id=run.id,
        model_version_id=current.id,
        model_name=current.name,
        threshold_set_id=tset.id,
        thresholds=tuple(float(tset.values[f]) for f in FINDINGS),
        chunks=tuple(tuple(pending[i : i + chunk_size]) for i in range(0, len(pending), chunk_size)),
        max_attempts=max_attempts,
        lease=stale_after,
    )
    return plan, abandoned


# --- predictions and failures ---------------------------------------------------------------------


def _ids_among(session: Session, query, column, ids: Sequence[int]) -> set[int]:
    """The ids ``query`` returns with ``column`` restricted to ``ids`` (in slices)."""
    found: set[int] = set()
    ids = list(ids)
    for start in range(0, len(ids), SLICE):
        found.update(session.scalars(query.where(column.in_(ids[start : start + SLICE]))))
    return found


def studies_done_in_run(session: Session, scoring_run_id: int, study_ids_: Sequence[int]) -> set[int]:
    """Those of ``study_ids_`` that run ``scoring_run_id`` already scored or recorded as failed
    (and counted): a retried chunk skips them."""
    scored = select(Prediction.study_id).where(Prediction.scoring_run_id == scoring_run_id).distinct()
    failed = select(ScoringFailure.study_id).where(ScoringFailure.scoring_run_id == scoring_run_id)
    return _ids_among(session, scored, Prediction.study_id, study_ids_) | _ids_among(
        session, failed, ScoringFailure.study_id, study_ids_
    )


def studies_scored_by_model(session: Session, model_version_id: int, study_ids_: Sequence[int]) -> set[int]:
    """Those of ``study_ids_`` that already have a prediction from ``model_version_id``."""
    query = select(Prediction.study_id).where(Prediction.model_version_id == model_version_id).distinct()
    return _ids_among(session, query, Prediction.study_id, study_ids_)


def write_predictions(session: Session, rows: Sequence[dict], *, keep_other_runs: bool = False) -> int:
    """Upsert prediction rows; a study keeps exactly one row per model version and finding.
    Returns the number of rows inserted or updated.

    With ``keep_other_runs`` an existing row is only replaced by the same scoring run (a retry):
    a study that an overlapping run committed first keeps that run's predictions and its rows
    are not counted. Runs write a study's rows in one transaction, so they all come from one
    run: the count divided by 14 is the number of studies this call won."""
    return upsert(
        session,
        Prediction,
        rows,
        ["study_id", "model_version_id", "finding"],
        ["probability", "decision", "threshold_set_id", "scoring_run_id", "created_at"],
        constants={"created_at": utcnow()},
        update_if_equal=("scoring_run_id",) if keep_other_runs else (),
    )


def record_scoring_failures(
    session: Session, scoring_run_id: int, failures: dict[int, str], max_attempts: int = DEFAULT_MAX_ATTEMPTS
) -> None:
    """The run's failures, and one more failed try for each study (its ``last_error`` the
    reason): a study at ``max_attempts`` becomes ``failed``, skipped until its file changes."""
    if not failures:
        return
    stamp = utcnow()
    reasons = {sid: validation.fit_column(ScoringFailure, "reason", reason) for sid, reason in failures.items()}
    rows = [
        {"scoring_run_id": scoring_run_id, "study_id": sid, "reason": reason, "created_at": stamp}
        for sid, reason in reasons.items()
    ]
    upsert(session, ScoringFailure, rows, ["scoring_run_id", "study_id"], ["reason"])
    table = Study.__table__
    tried = (
        update(table)
        .where(table.c.id == bindparam("failed_id"))
        .values(
            scoring_attempts=table.c.scoring_attempts + 1,
            last_error=bindparam("failed_reason"),
            status=case((table.c.scoring_attempts + 1 >= max_attempts, StudyStatus.FAILED.value), else_=table.c.status),
        )
    )
    session.connection().execute(tried, [{"failed_id": sid, "failed_reason": r} for sid, r in reasons.items()])


def commit_batch(
    session: Session,
    plan: ScoringPlan,
    study_ids: Sequence[int],
    probabilities: np.ndarray,
    decisions: np.ndarray,
    failures: dict[int, str],
) -> int:
    """One scored batch: its predictions (studies another run committed first are left alone),
    its failures and the run's counts, in the caller's transaction. Returns how many studies
    this batch won."""
    rows = [
        {
            "study_id": sid,
            "model_version_id": plan.model_version_id,
            "finding": finding,
            "probability": float(p),
            "decision": bool(d),
            "threshold_set_id": plan.threshold_set_id,
            "scoring_run_id": plan.scoring_run_id,
        }
        for sid, probs, calls in zip(study_ids, probabilities, decisions, strict=True)
        for finding, p, d in zip(FINDINGS, probs, calls, strict=True)
    ]
    won = write_predictions(session, rows, keep_other_runs=True) // len(FINDINGS)
    record_scoring_failures(session, plan.scoring_run_id, failures, plan.max_attempts)
    add_scoring_counts(session, plan.scoring_run_id, won, len(failures))
    claims.renew(session, plan.scoring_run_id, plan.lease)
    return won


# --- the summary ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoringSummary:
    """The headline of one scoring run: its counts, model, and positive decisions per finding."""

    scoring_run_id: int
    status: str
    model_name: str
    threshold_set_id: int
    n_candidates: int
    n_scored: int
    n_failed: int
    n_skipped: int
    started_at: datetime
    finished_at: datetime | None
    flagged: dict[str, int]


def scoring_summary(session: Session, scoring_run_id: int) -> ScoringSummary:
    """The :class:`ScoringSummary` of one scoring run (``ValueError`` if there is none)."""
    run = session.get(ScoringRun, scoring_run_id)
    if run is None:
        raise ValueError(f"no scoring run with id {scoring_run_id}")
    model_name = session.scalar(select(ModelVersion.name).where(ModelVersion.id == run.model_version_id))
    flagged = dict(
        session.execute(
            select(Prediction.finding, func.count())
            .where(Prediction.scoring_run_id == scoring_run_id, Prediction.decision.is_(True))
            .group_by(Prediction.finding)
        ).all()
    )
    return ScoringSummary(
        run.id,
        run.status,
        model_name,
        run.threshold_set_id,
        run.n_candidates,
        run.n_scored,
        run.n_failed,
        run.n_skipped,
        run.started_at,
        run.finished_at,
        {finding: int(n) for finding, n in flagged.items()},
    )
