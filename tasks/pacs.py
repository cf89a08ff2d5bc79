"""The PACS steps of the night: pull new radiographs over DICOMweb, write the reports back.

Both steps read the PACS's address and credentials from the ``CXR_DICOMWEB_*`` settings of the
host that runs them (or a Prefect Secret block), never from parameters: a flow run's parameters
are stored by Prefect and shown in its UI, credentials must not be. A PACS that does not answer
is recorded (the pull's cursor stays; an unsent report stays pending) and the night goes on;
refused credentials are a :class:`~cxrmodel.pacs.dicomweb.PacsAuthError` (a person must act).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from cxrmodel.errors import UserError
from cxrmodel.findings import FINDINGS
from cxrmodel.pacs.dicomweb import Pacs, PacsAuthError, PacsConnection, PacsRejectedError, PacsUnavailableError
from cxrmodel.pacs.pull import UnusableInstanceError, candidates, store_instance, study_of
from cxrmodel.pacs.sr import FindingResult, ModelIdentity, build_report, conformant_header
from db import pacs as store
from db.engine import session_scope
from db.statuses import PacsInstanceStatus, PacsObjectKind, PacsObjectStatus
from deployments.settings import Settings, workspace
from tasks.common import run_logger

#: Tries of one STOW-RS request within a night before the PACS counts as down.
TRIES_NOW = 3


def pacs_connection(settings: Settings | None = None) -> PacsConnection | None:
    """The PACS of ``CXR_DICOMWEB_URL`` (None when unset), logged in with ``CXR_DICOMWEB_USER`` /
    ``CXR_DICOMWEB_PASSWORD`` or the Prefect Secret block named by ``CXR_DICOMWEB_SECRET``
    (JSON ``{"user": ..., "password": ...}``)."""
    settings = settings or Settings()
    if not settings.dicomweb_url:
        return None
    user = settings.dicomweb_user
    password = settings.dicomweb_password.get_secret_value() if settings.dicomweb_password else None
    if settings.dicomweb_secret:
        from prefect.blocks.system import Secret

        try:
            secret = Secret.load(settings.dicomweb_secret).get()
        except ValueError as exc:
            raise UserError(f"no Prefect Secret block named {settings.dicomweb_secret!r} (CXR_DICOMWEB_SECRET)") from exc
        values = secret if isinstance(secret, dict) else json.loads(secret)
        user, password = values.get("user", user), values.get("password", password)
    return PacsConnection(settings.dicomweb_url, user, password, settings.dicomweb_tls_verify, settings.dicomweb_timeout_s)


def _require(connection: PacsConnection | None) -> PacsConnection:
    if connection is None:
        raise UserError("no PACS configured: set CXR_DICOMWEB_URL (and CXR_DICOMWEB_USER/PASSWORD or CXR_DICOMWEB_SECRET)")
    return connection


@dataclass(frozen=True)
class PullResult:
    """What one pull did. ``error``: why it stopped early (the PACS did not answer); what it
    registered before that is kept, and the next pull searches the same window again."""

    source: str
    searched_since: str | None
    studies: int = 0
    registered: int = 0
    skipped: int = 0
    failed: int = 0
    retry: int = 0
    already_seen: int = 0
    error: str | None = None
    problems: list[str] = field(default_factory=list)  # "<SOP UID>: <reason>" of each skip and failure


@task(name="pacs-pull", cache_policy=NO_CACHE)
def pull_from_pacs(home: str | None = None, database_url: str | None = None) -> PullResult:
    """Search the PACS (QIDO-RS) for CR/DX studies since the cursor less the overlap window,
    plus the studies of instances whose retrieval failed before; retrieve (WADO-RS) each frontal
    instance not seen before, keep it by content in ``<home>/incoming-store`` and register it
    as an unlabelled study. Every instance seen gets a row with its outcome."""
    settings = Settings(**({"home": Path(home)} if home else {}))
    ws = workspace(home, database_url)
    home_path, url = ws.home, ws.database_url
    connection = _require(pacs_connection(settings))
    source, logger = connection.display_url, run_logger()
    modalities = tuple(settings.dicomweb_modalities)
    started = datetime.now(UTC)
    with session_scope(url) as session:
        since = store.cursor(session, source)
        retry_studies = [r.study_instance_uid for r in store.instances_to_retry(session, source)]
    since_date = (since - timedelta(hours=settings.dicomweb_overlap_hours)).date() if since else None
    counts = dict.fromkeys(("studies", "registered", "skipped", "failed", "retry", "already_seen"), 0)
    problems: list[str] = []
    error = None
    pacs = Pacs(connection)
    try:
        found = pacs.search_studies(modalities, since_date)
        study_uids = list(dict.fromkeys([*found, *retry_studies]))
        counts["studies"] = len(study_uids)
        for study_uid in study_uids:
            metadata = pacs.study_metadata(study_uid)
            instances = candidates(metadata, modalities, settings.dicomweb_max_pixels, source)
            with session_scope(url) as session:
                seen = store.instances_seen(session, [c.sop_instance_uid for c in instances])
                ours = store.our_objects(session, [c.sop_instance_uid for c in instances])
            for c in (c for c in instances if c.sop_instance_uid not in ours):  # our own reports: not news
                before = seen.get(c.sop_instance_uid)
                if before is not None and before.status != PacsInstanceStatus.RETRY:
                    counts["already_seen"] += 1
                    continue
                outcome, reason = _pull_one(pacs, c, url, home_path / "incoming-store", settings.dicomweb_max_pixels)
                counts[str(outcome)] += 1
                if reason:
                    problems.append(f"{c.sop_instance_uid}: {reason}")
    except PacsUnavailableError as exc:
        error = str(exc)
    except PacsAuthError as exc:
        with session_scope(url) as session:
            store.record_pull_error(session, source, str(exc))
        raise
    finally:
        pacs.close()
    with session_scope(url) as session:
        if error:
            store.record_pull_error(session, source, error)
        else:
            store.record_search(session, source, started)
    result = PullResult(source, since_date.isoformat() if since_date else None, **counts, error=error, problems=problems)
    logger.info(
        "PACS pull from %s: %d studies, %d registered, %d skipped, %d failed, %d to retry, %d seen before%s",
        source,
        result.studies,
        result.registered,
        result.skipped,
        result.failed,
        result.retry,
        result.already_seen,
        f"; stopped: {error}" if error else "",
    )
    return result


def _pull_one(pacs: Pacs, c, url: str, incoming_store: Path, max_pixels: int) -> tuple[PacsInstanceStatus, str | None]:
    """Retrieve, check, store and register one instance (or record why not); its outcome and reason."""
    if c.skip:
        with session_scope(url) as session:
            store.record_instance(session, c.fields, PacsInstanceStatus.SKIPPED, c.skip)
        return PacsInstanceStatus.SKIPPED, c.skip
    try:
        data = pacs.retrieve_instance_bytes(c.fields["study_instance_uid"], c.fields["series_instance_uid"], c.sop_instance_uid)
    except (PacsUnavailableError, PacsRejectedError) as exc:
        with session_scope(url) as session:
            store.record_instance(session, c.fields, PacsInstanceStatus.RETRY, str(exc))
        if isinstance(exc, PacsUnavailableError):
            raise  # the PACS is down: stop here, the next pull retries this one
        return PacsInstanceStatus.RETRY, str(exc)
    try:
        image, content_hash = store_instance(data, incoming_store, max_pixels)
    except UnusableInstanceError as exc:
        with session_scope(url) as session:
            store.record_instance(session, c.fields, PacsInstanceStatus(exc.status), exc.reason)
        return PacsInstanceStatus(exc.status), exc.reason
    with session_scope(url) as session:
        store.register_instance(session, c.fields, study_of(c, image, content_hash))
    return PacsInstanceStatus.REGISTERED, None


@dataclass(frozen=True)
class PushResult:
    """What one write-back did: reports sent, refused (still pending or given up), and why it
    stopped early (``error``: the PACS did not answer; the rest waits for the next night)."""

    to_send: int = 0
    sent: int = 0
    refused: int = 0
    given_up: int = 0
    error: str | None = None
    problems: list[str] = field(default_factory=list)


@task(name="pacs-push", cache_policy=NO_CACHE)
def push_to_pacs(home: str | None = None, database_url: str | None = None, backoff_s: float = 2.0) -> PushResult:
    """Write back one Comprehensive SR per scored PACS instance and model version (STOW-RS) that
    is not sent yet, and with ``CXR_DICOMWEB_HEATMAP`` its Grad-CAM secondary capture in the
    same series; each try is recorded. A PACS that does not answer after :data:`TRIES_NOW` tries
    stops the step (the rest stays pending for the next night); an object the PACS refuses is
    given up after ``CXR_DICOMWEB_MAX_ATTEMPTS`` tries."""
    settings = Settings(**({"home": Path(home)} if home else {}))
    url = workspace(home, database_url).database_url
    connection = _require(pacs_connection(settings))
    kinds = [PacsObjectKind.SR, *([PacsObjectKind.HEATMAP] if settings.dicomweb_heatmap else [])]
    pacs = Pacs(connection)
    totals = {"to_send": 0, "sent": 0, "refused": 0, "given_up": 0}
    problems: list[str] = []
    error = None
    try:
        for kind in kinds:
            with session_scope(url) as session:
                work = store.reports_to_send(session, kind)
            totals["to_send"] += len(work)
            error = _send(pacs, url, work, kind, settings.dicomweb_max_attempts, backoff_s, totals, problems)
            if error:
                break
    finally:
        pacs.close()
    result = PushResult(**totals, error=error, problems=problems)
    run_logger().info(
        "PACS write-back to %s: %d of %d objects sent, %d refused (%d given up)%s",
        connection.display_url,
        result.sent,
        result.to_send,
        result.refused,
        result.given_up,
        f"; stopped: {error}" if error else "",
    )
    return result


def _build(item: store.ReportWork, kind: PacsObjectKind, models: dict):
    """The DICOM object of ``kind`` for one prediction (``models``: loaded networks, by version id)."""
    import numpy as np
    import pydicom

    source = conformant_header(pydicom.dcmread(item.image_path, stop_before_pixels=True))
    model = ModelIdentity(item.model_name, item.model_sha256)
    if kind == PacsObjectKind.SR:
        results = [
            FindingResult(f, p, t, d)
            for f, p, t, d in zip(FINDINGS, item.probabilities, item.thresholds, item.decisions, strict=True)
        ]
        return build_report(source, results, model, item.threshold_set_id)
    from cxrmodel.pacs.heatmap import build_heatmap, compute_overlay

    if item.model_version_id not in models:
        from cxrmodel.models.loading import load_model_version
        from db import registry

        with session_scope(models["url"]) as session:
            models[item.model_version_id] = load_model_version(registry.model_version_files(session, item.model_version_id))
    rgb, finding = compute_overlay(models[item.model_version_id], item.image_path, np.asarray(item.probabilities))
    return build_heatmap(source, rgb, finding, model, item.threshold_set_id)


def _send(
    pacs: Pacs, url: str, work, kind: PacsObjectKind, max_attempts: int, backoff_s: float, totals: dict, problems: list
) -> str | None:
    """Send each object of ``work``; record every try; the error that stopped it (PACS down), if any."""
    models: dict = {"url": url}
    for item in work:
        try:
            dataset = _build(item, kind, models)
        except (OSError, ValueError, RuntimeError) as exc:  # a source file gone or unreadable: recorded, counted
            uids = (f"unbuilt-{kind}-{item.pacs_instance_id}", f"unbuilt-{kind}-{item.pacs_instance_id}-{item.threshold_set_id}")
            with session_scope(url) as session:
                store.record_object(session, item, kind, uids, f"could not build the {kind}: {exc}", max_attempts)
            totals["refused"] += 1
            problems.append(f"{item.sop_instance_uid}: could not build the {kind}: {exc}")
            continue
        uids = (str(dataset.SeriesInstanceUID), str(dataset.SOPInstanceUID))
        try:
            _store_with_retries(pacs, dataset, item.study_instance_uid, backoff_s)
        except PacsUnavailableError as exc:
            with session_scope(url) as session:
                store.record_object(session, item, kind, uids, str(exc), max_attempts, count_attempt=False)
            return str(exc)
        except PacsRejectedError as exc:
            with session_scope(url) as session:
                status = store.record_object(session, item, kind, uids, str(exc), max_attempts)
            totals["refused"] += 1
            totals["given_up"] += status == PacsObjectStatus.FAILED
            problems.append(f"{item.sop_instance_uid}: {exc}")
            continue
        with session_scope(url) as session:
            store.record_object(session, item, kind, uids, None, max_attempts)
        totals["sent"] += 1
    return None


def _store_with_retries(pacs: Pacs, report, study_uid: str, backoff_s: float) -> None:
    for attempt in range(TRIES_NOW):
        try:
            pacs.store([report], study_uid)
            return
        except PacsUnavailableError:
            if attempt == TRIES_NOW - 1:
                raise
            time.sleep(backoff_s * (2**attempt))
