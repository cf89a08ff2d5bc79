"""The PACS link as flows: ``cxr pacs pull`` and ``cxr pacs push`` run these (the night runs
the same tasks as steps of :func:`flows.nightly.nightly_flow`)."""

from __future__ import annotations

from prefect import flow

from tasks.pacs import PullResult, PushResult, pull_from_pacs, push_to_pacs


@flow(name="cxr-pacs-pull")
def pacs_pull_flow(home: str | None = None, database_url: str | None = None) -> PullResult:
    """Pull new CR/DX frontal radiographs from the PACS of ``CXR_DICOMWEB_URL`` (QIDO-RS, WADO-RS)
    and register them as unlabelled studies."""
    return pull_from_pacs(home, database_url)


@flow(name="cxr-pacs-push")
def pacs_push_flow(home: str | None = None, database_url: str | None = None) -> PushResult:
    """Write a DICOM SR of each scored PACS study back to the PACS (STOW-RS)."""
    return push_to_pacs(home, database_url)
