"""The night: refresh the data, then score what is registered, as one flow run.

Why one flow and not two deployments chained by an automation: the night is one unit an
operator watches (one run in the UI, one state, one place for its logs), scoring must start
only once the refresh has finished, and a failed refresh must not cancel the night: the
studies registered before it still get scored. An automation fires on the refresh's
*completion* event, so a failed refresh would score nothing, and the two halves would be two
runs to correlate by time. Here the refresh runs as a subflow whose failure is caught: scoring
runs either way, its report says the refresh failed and why, and the night then ends Failed so
that the failure is not lost in a green run.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger

from cxrmodel.config import DataConfig
from cxrmodel.layout import HomeLayout
from deployments.settings import Settings
from flows.params import resolve
from flows.results import NightResult
from flows.stages import refresh_flow, score_flow
from tasks.artifacts import link_run_to_report
from tasks.nightly import publish_night_summary
from tasks.pacs import pull_from_pacs, push_to_pacs
from tasks.scoring import DEFAULT_CHUNK_SIZE


class RefreshFailedError(RuntimeError):
    """Tonight's refresh failed; scoring still ran on what was registered before."""


class PacsStepFailedError(RuntimeError):
    """A PACS step of tonight failed outright (refused credentials, ...); scoring still ran."""


def _pacs_step(step, name: str, errors: list[str], where: dict) -> dict | None:
    """Run one PACS task; its result as a dict, or None with its error added to ``errors``. A
    PACS that does not answer is not an error here: the step says so in its result."""
    import dataclasses

    try:
        result = dataclasses.asdict(step(**where))
    except Exception as exc:  # noqa: BLE001 - a PACS step never stops the night
        errors.append(f"{name} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        get_run_logger().error("tonight's PACS %s failed (%s); going on", name, errors[-1])
        return None
    if result.get("error"):
        get_run_logger().warning("the PACS did not answer during the %s: %s (retried next night)", name, result["error"])
    return result


def _state_reason(state) -> str:
    """The one-line reason of a failed Prefect state (its exception message)."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - any failure of the subflow is its reason
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return state.message or state.name


@flow(name="cxr-nightly")
def nightly_flow(
    source_dir: str | None = None,
    incoming_dir: str | None = None,
    source: Literal["nih-local", "synthetic"] | None = None,
    data: DataConfig = DataConfig(),
    batch_size: int = 64,
    task_runner: Literal["default", "dask"] = "default",
    dask_address: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    home: str | None = None,
    database_url: str | None = None,
) -> NightResult:
    """Refresh the labelled data in ``source_dir`` and register the new studies in
    ``incoming_dir`` (either may be unset; unset values come from ``CXR_SOURCE_DIR``,
    ``CXR_INCOMING_DIR`` and ``CXR_SOURCE`` of the host that runs the night), then score every
    pending study with the champion. A failed refresh does not stop the scoring; the night then
    ends Failed, and its scoring report says why. With ``CXR_DICOMWEB_URL`` set the night also
    pulls new radiographs from that PACS before scoring and writes an SR of each scored PACS
    study back after it (``CXR_DICOMWEB_WRITEBACK``); a PACS that is down is recorded and
    retried next night, and never stops the scoring."""
    settings = Settings()
    source_dir = source_dir or (str(settings.source_dir) if settings.source_dir else None)
    incoming_dir = incoming_dir or (str(settings.incoming_dir) if settings.incoming_dir else None)
    where = {"home": home, "database_url": database_url}
    logger = get_run_logger()

    refresh, refresh_error = None, None
    if source_dir is None and incoming_dir is None and settings.dicomweb_url:
        logger.info("no source or incoming folder: the PACS is tonight's only source")
    else:
        refresh_state = refresh_flow(
            source_dir, source or settings.source, incoming_dir, data, dataset_report=True, **where, return_state=True
        )
        if refresh_state.is_completed():
            refresh = refresh_state.result()
        else:
            refresh_error = _state_reason(refresh_state)
            logger.error("tonight's refresh failed (%s); scoring what is already registered", refresh_error)

    pacs = {"pull": None, "push": None, "errors": []} if settings.dicomweb_url else None
    if pacs is not None:  # a PACS that fails never stops the scoring: its error is the night's report
        pacs["pull"] = _pacs_step(pull_from_pacs, "pull", pacs["errors"], where)
    scored = score_flow(batch_size=batch_size, task_runner=task_runner, dask_address=dask_address, chunk_size=chunk_size, **where)
    if pacs is not None and settings.dicomweb_writeback:
        pacs["push"] = _pacs_step(push_to_pacs, "write-back", pacs["errors"], where)
    night = NightResult(refresh, refresh_error, scored.scoring_run_id, scored.report, pacs)
    publish_night_summary(night.refresh, night.refresh_error, night.scoring_run_id, night.scoring_report, pacs=pacs, **where)
    if pacs is not None and pacs["errors"]:
        raise PacsStepFailedError(
            f"PACS {'; '.join(pacs['errors'])}; scoring run {night.scoring_run_id} scored what was registered"
        )
    if night.scoring_report:
        dataset = {"dataset report": refresh.dataset_report} if refresh and refresh.dataset_report else None
        link_run_to_report("scoring report", night.scoring_report, HomeLayout(resolve(home, database_url)[0]).reports, dataset)
    if refresh_error:
        raise RefreshFailedError(
            f"refresh failed ({refresh_error}); scoring run {night.scoring_run_id} scored what was registered"
        )
    return night
