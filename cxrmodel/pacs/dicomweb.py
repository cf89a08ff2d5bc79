"""A PACS over DICOMweb (``dicomweb-client``): search (QIDO-RS), metadata and retrieval (WADO-RS),
storage (STOW-RS), with the PACS's failures turned into three errors the night can act on.

- :class:`PacsAuthError`: the PACS refused our credentials (a person must fix them: the
  command line says so in one line, exit status 2).
- :class:`PacsUnavailableError`: the PACS did not answer (down, timeout, 5xx): nothing is
  lost, the night records it and the next night tries again.
- :class:`PacsRejectedError`: the PACS answered and refused this one request (a 4xx): recorded
  against the object concerned, with a bounded number of tries.

The connection's password lives only in :class:`PacsConnection` (never in its ``repr``, never in
an error message: errors name the URL without credentials).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from urllib.parse import urlsplit, urlunsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from cxrmodel.errors import UserError

#: WADO-RS metadata tags (hex) the pull reads from each instance.
TAG = {
    "study": "0020000D",
    "series": "0020000E",
    "sop": "00080018",
    "sop_class": "00080016",
    "modality": "00080060",
    "view": "00185101",
    "rows": "00280010",
    "columns": "00280011",
    "frames": "00280008",
    "samples": "00280002",
    "pixels": "7FE00010",
    "accession": "00080050",
    "age": "00101010",
    "sex": "00100040",
    "patient_id": "00100020",
    "study_date": "00080020",
}


class PacsError(RuntimeError):
    """A DICOMweb request failed."""


class PacsUnavailableError(PacsError):
    """The PACS did not answer, or answered with a server error: try again later."""


class PacsRejectedError(PacsError):
    """The PACS answered and refused this request (a 4xx other than 401/403)."""


class PacsAuthError(PacsError, UserError):
    """The PACS refused the credentials (401/403): a person must fix them."""


def public_url(url: str) -> str:
    """``url`` without any user:password part (what logs and errors may show)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class PacsConnection:
    """Where the PACS is and how to log in. ``verify``: TLS verification (a CA bundle path allowed)."""

    url: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    verify: bool | str = True
    timeout_s: float = 30.0

    @property
    def display_url(self) -> str:
        return public_url(self.url)


def _failure(exc: Exception, what: str, url: str) -> PacsError:
    """The :class:`PacsError` of a failed request (no credentials in the message)."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        if code in (401, 403):
            return PacsAuthError(f"the PACS at {url} refused the credentials (HTTP {code}) during {what}")
        if code >= 500 or code in (408, 429):
            return PacsUnavailableError(f"the PACS at {url} failed during {what} (HTTP {code})")
        return PacsRejectedError(f"the PACS at {url} refused {what} (HTTP {code})")
    if isinstance(exc, requests.RequestException | ConnectionError | TimeoutError):
        reason = type(exc).__name__
        return PacsUnavailableError(f"the PACS at {url} did not answer during {what} ({reason})")
    return PacsError(f"{what} at {url} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


class Pacs:
    """One DICOMweb service. Every method raises :class:`PacsError` subclasses only."""

    def __init__(self, connection: PacsConnection) -> None:
        self.connection = connection
        session = requests.Session()
        if connection.user is not None:
            session.auth = (connection.user, connection.password or "")
        session.verify = connection.verify
        self._session = session
        self._client = DICOMwebClient(url=connection.url.rstrip("/"), session=session)
        # our own retries: a PACS that is down is recorded, not waited for
        self._client.set_http_retry_params(retry=False)
        self._timeout = connection.timeout_s

    def close(self) -> None:
        self._session.close()

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        try:
            yield
        except PacsError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure of a request becomes a PacsError
            raise _failure(exc, what, self.connection.display_url) from None

    def check(self) -> None:
        """One cheap QIDO-RS request: refused credentials or a PACS that is down show here."""
        with self._call("a connection check (QIDO-RS)"):
            self._client.search_for_studies(limit=1)

    def search_studies(self, modalities: Sequence[str], since: date | None) -> list[str]:
        """Study Instance UIDs of the studies holding any of ``modalities`` whose Study Date is
        ``since`` or later (every study without ``since``), by QIDO-RS, page by page."""
        found: dict[str, None] = {}
        for modality in modalities:
            filters = {"ModalitiesInStudy": modality}
            if since is not None:
                filters["StudyDate"] = f"{since:%Y%m%d}-"
            offset = 0
            while True:
                with self._call("the study search (QIDO-RS)"):
                    page = self._client.search_for_studies(search_filters=filters, offset=offset, limit=500)
                for study in page:
                    uid = (study.get(TAG["study"], {}).get("Value") or [None])[0]
                    if uid:
                        found.setdefault(uid)
                if len(page) < 500:
                    break
                offset += len(page)
        return list(found)

    def study_metadata(self, study_instance_uid: str) -> list[dict]:
        """The WADO-RS metadata (DICOM JSON, no pixels) of every instance of a study."""
        with self._call(f"the metadata of study {study_instance_uid} (WADO-RS)"):
            return self._client.retrieve_study_metadata(study_instance_uid)

    def retrieve_instance_bytes(self, study: str, series: str, sop: str) -> bytes:
        """One instance as a DICOM Part 10 file (WADO-RS), as the PACS holds it."""
        with self._call(f"the retrieval of instance {sop} (WADO-RS)"):
            dataset = self._client.retrieve_instance(study, series, sop)
            buffer = io.BytesIO()
            pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
            return buffer.getvalue()

    def store(self, datasets: Sequence[Dataset], study_instance_uid: str) -> None:
        """Store ``datasets`` in their study (STOW-RS). An instance the PACS already holds
        (same SOP Instance UID) is not duplicated: it is the same object again."""
        with self._call(f"the storage of {len(datasets)} object(s) in study {study_instance_uid} (STOW-RS)"):
            response = self._client.store_instances(list(datasets), study_instance_uid=study_instance_uid)
            failed = response.get("00081198", {}).get("Value") if response is not None else None
            if failed:
                raise PacsRejectedError(
                    f"the PACS at {self.connection.display_url} refused {len(failed)} object(s) of study {study_instance_uid} (STOW-RS failed SOP sequence)"
                )

    def instances_in_series(self, study: str, series: str) -> list[str]:
        """SOP Instance UIDs of a series (QIDO-RS); empty if the series does not exist."""
        with self._call(f"the instance search of series {series} (QIDO-RS)"):
            found = self._client.search_for_instances(study_instance_uid=study, series_instance_uid=series)
        return [(i.get(TAG["sop"], {}).get("Value") or [""])[0] for i in found]

    def retrieve_instance(self, study: str, series: str, sop: str) -> Dataset:
        with self._call(f"the retrieval of instance {sop} (WADO-RS)"):
            return self._client.retrieve_instance(study, series, sop)


def value(meta: dict, key: str) -> object | None:
    """The first value of tag ``key`` (a name of :data:`TAG`) in DICOM JSON ``meta``, or None."""
    element = meta.get(TAG[key]) or {}
    values = element.get("Value")
    if not values:
        return None
    first = values[0]
    if isinstance(first, dict):  # a person name
        return first.get("Alphabetic")
    return first


def has_pixel_data(meta: dict) -> bool:
    element = meta.get(TAG["pixels"]) or {}
    return bool(element.get("BulkDataURI") or element.get("InlineBinary"))
