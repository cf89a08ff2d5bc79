"""What every task shares: its logger, the retry rule for database errors, the flow run's id,
the labelled studies as a frame, and a model version's folder."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from prefect.cache_policies import NO_CACHE
from sqlalchemy.exc import DBAPIError, OperationalError

from cxrmodel.errors import UserError
from cxrmodel.layout import HomeLayout
from db import studies
from db.engine import session_scope


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task run; a plain logger when a task's function is
    called directly (``task.fn(...)``, benchmarks, notebooks)."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("cxr")


def transient_db_error(exc: BaseException) -> bool:
    """A database error worth retrying: the server went away or refused for now (SQLAlchemy's
    ``OperationalError``: connection lost, server restarting, SQLite ``database is locked``),
    or any DBAPI error that invalidated the connection (a disconnect)."""
    while exc is not None:
        if isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
            return True
        exc = exc.__cause__
    return False


def retry_on_transient_db_error(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry only transient database errors (a bug or a bad
    input fails at once instead of three times)."""
    try:
        state.result()
    except UserError:
        return False
    except Exception as exc:  # the task's exception
        return transient_db_error(exc)
    return False


def retry_unless_user_error(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn`` for tasks that retry any failure (a network fetch) except
    a :class:`cxrmodel.errors.UserError`: a missing file stays missing."""
    try:
        state.result()
    except UserError:
        return False
    except Exception:  # noqa: BLE001 - anything else may pass on a second try
        return True
    return False


def backoff_delays(budget_s: float, first_s: float = 2.0, cap_s: float = 60.0) -> list[float]:
    """Retry delays doubling from ``first_s`` up to ``cap_s`` until together they cover
    ``budget_s`` (the time a lost database connection is waited for): 240 s gives
    2, 4, 8, 16, 32, 60, 60, 60."""
    delays: list[float] = []
    while sum(delays) < budget_s and len(delays) < 50:  # Prefect takes at most 50 delays
        delays.append(min(first_s * 2 ** len(delays), cap_s))
    return delays


def db_retry_options(budget_s: float) -> dict:
    """``with_options`` of a database task that waits out an outage of about ``budget_s``."""
    delays = backoff_delays(budget_s)
    return dict(retries=len(delays), retry_delay_seconds=delays or 0)


#: Prefect options of the tasks that write to the database.
DB_RETRIES = dict(
    retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=retry_on_transient_db_error, cache_policy=NO_CACHE
)


def flow_run_id() -> str | None:
    """The current Prefect flow run's id, or None outside a flow."""
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id) if flow_run.id else None
    except Exception:  # pragma: no cover - outside Prefect
        return None


def labelled_frame(database_url: str) -> pd.DataFrame:
    """All active labelled studies with their split, features, image path, content hash and 14
    label columns (:func:`db.studies.labelled_frame`; ``RuntimeError`` when there are none)."""
    with session_scope(database_url) as session:
        return studies.labelled_frame(session)


def model_dir(home: Path, name: str) -> Path:
    """``home/models/<name>``, created: where a model version's artefacts live."""
    return HomeLayout(Path(home)).model_dir(name)


def evaluation_ref(database_url: str, ref: int | str) -> int:
    """The id of the evaluation ``ref`` names (an id or ``latest``; :class:`db.lookup.NotFound`
    otherwise, never retried)."""
    from db import lookup

    with session_scope(database_url) as session:
        return lookup.evaluation(session, ref).id
