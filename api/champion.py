"""The champion, loaded once per process and swapped when the registry names another.

:meth:`ChampionHolder.current` asks the registry (two indexed queries) at most every
``ttl_s`` seconds from a background task; a new champion (or a new active threshold set) is
loaded in a worker thread while requests keep being served by the old one, then swapped in one
assignment. A champion that cannot be loaded is refused and retried on a back-off. A request
holds the :class:`Champion` it started with to the end, so it is scored, thresholded and
stored with one version and one threshold set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from cxrmodel.explain.similarity import EmbeddingIndex
from cxrmodel.findings import FINDINGS
from cxrmodel.models.loading import LoadedModel, load_model_version
from db import registry
from db.engine import session_scope
from db.thresholds import active_threshold_set

log = logging.getLogger("cxr.api")


@dataclass(frozen=True)
class Champion:
    version_id: int
    name: str
    kind: str
    threshold_set_id: int
    threshold_method: str
    thresholds: tuple[float, ...]  # FINDINGS order
    model: LoadedModel
    index: EmbeddingIndex | None  # labelled studies' embeddings (similar cases), when there is one
    index_reason: str | None  # why there is no index

    @property
    def identity(self) -> tuple[int, int]:
        return self.version_id, self.threshold_set_id


class NoChampion(RuntimeError):
    pass


def _registry_identity(database_url: str) -> tuple[int, int] | None:
    """(champion id, its active threshold set id); None without a usable champion."""
    with session_scope(database_url) as session:
        current = registry.champion(session)
        if current is None:
            return None
        tset = active_threshold_set(session, current.id)
        return (current.id, tset.id) if tset is not None else None


def load_champion(database_url: str, previous: Champion | None = None) -> Champion:
    """Load the registry's champion, its active thresholds and its embedding index; the network
    of ``previous`` is reused when only the threshold set changed."""
    with session_scope(database_url) as session:
        current = registry.champion(session)
        if current is None:
            raise NoChampion("no champion model version: train, evaluate and promote one first")
        tset = active_threshold_set(session, current.id)
        if tset is None:
            raise NoChampion(f"champion {current.name} has no active threshold set")
        files = registry.model_version_files(session, current.id)
        try:
            indexed = registry.indexed_network(session, current.id)
        except RuntimeError as exc:
            indexed, index_reason = None, str(exc)
        else:
            index_reason = None
    model = previous.model if previous is not None and previous.version_id == current.id else load_model_version(files)
    index = None
    if indexed is not None:
        try:
            index = EmbeddingIndex.load(indexed.config["embedding_index"], indexed.config.get("embedding_index_sha256"))
        except Exception as exc:  # noqa: BLE001 - similar cases are an extra: score without them
            index_reason = f"embedding index of {indexed.name} unavailable: {type(exc).__name__}: {exc}"
    return Champion(
        current.id,
        current.name,
        str(current.kind),
        tset.id,
        str(tset.method),
        tuple(float(tset.values[f]) for f in FINDINGS),
        model,
        index,
        index_reason,
    )


@dataclass(frozen=True)
class RefusedSwap:
    """A champion the registry names but this process could not load: which, why, and when the
    next try is due (the back-off doubles per failed try)."""

    version_id: int
    threshold_set_id: int
    reason: str
    tries: int
    next_try: float  # time.monotonic()

    @property
    def identity(self) -> tuple[int, int]:
        return self.version_id, self.threshold_set_id


class ChampionHolder:
    """The process's champion (see the module docstring).

    Requests read :attr:`loaded` (one reference, never a half-built model) and never wait for
    the registry or a load: :meth:`watch` asks the registry every ``ttl_s`` seconds in the
    background and loads a new champion in a thread of its own, then swaps the reference. A
    champion that fails to load (a weights file failing its integrity check) is refused: the
    one already loaded keeps serving, the refusal is logged once and shown by ``/readyz``
    (:attr:`refused`), and the load is tried again after ``retry_s``, doubling up to
    ``retry_max_s``. A registry that cannot be reached leaves the champion as it is.
    """

    def __init__(
        self,
        database_url: str,
        ttl_s: float = 2.0,
        retry_s: float = 5.0,
        retry_max_s: float = 300.0,
        on_database_error=None,
        on_database_ok=None,
    ) -> None:
        self.database_url = database_url
        self.ttl_s, self.retry_s, self.retry_max_s = ttl_s, retry_s, retry_max_s
        self._champion: Champion | None = None
        self.refused: RefusedSwap | None = None
        self.last_error: str | None = None
        self._on_database_error = on_database_error or (lambda exc: None)
        self._on_database_ok = on_database_ok or (lambda: None)
        self._task: asyncio.Task | None = None

    @property
    def loaded(self) -> Champion | None:
        return self._champion

    async def current(self) -> Champion:
        """The champion now (``NoChampion`` when none is loaded); never waits for a load."""
        champion = self._champion
        if champion is None:
            raise NoChampion(self.last_error or "no champion model version")
        return champion

    async def start(self) -> None:
        """Load the champion once (start-up), then keep watching the registry in the background."""
        await self.refresh()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.watch(), name="cxr-champion-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one failure
                log.exception("champion check failed; the loaded champion keeps serving")

    async def refresh(self) -> None:
        """Ask the registry once; load and swap in a new champion (or threshold set) if it names one."""
        try:
            identity = await asyncio.to_thread(_registry_identity, self.database_url)
        except SQLAlchemyError as exc:
            self._on_database_error(exc)  # the champion loaded stays; the outage is logged once
            return
        self._on_database_ok()
        if identity is None:
            self._champion = None
            self.last_error = "no champion model version with an active threshold set: train, evaluate and promote one"
            return
        if self._champion is not None and self._champion.identity == identity:
            self.refused = None
            return
        refused = self.refused
        if refused is not None and refused.identity == identity and time.monotonic() < refused.next_try:
            return
        try:
            loaded = await asyncio.to_thread(load_champion, self.database_url, self._champion)
        except NoChampion as exc:
            self._champion, self.last_error = None, str(exc)
            return
        except SQLAlchemyError as exc:
            self._on_database_error(exc)
            return
        except Exception as exc:  # noqa: BLE001 - a bad artefact must not take the service down
            self._refuse(identity, f"{type(exc).__name__}: {exc}")
            return
        if self._champion is not None:
            log.info("champion swapped: %s -> %s", self._champion.name, loaded.name)
        self._champion, self.last_error, self.refused = loaded, None, None

    def _refuse(self, identity: tuple[int, int], reason: str) -> None:
        previous = self.refused
        tries = previous.tries + 1 if previous is not None and previous.identity == identity else 1
        delay = min(self.retry_s * 2 ** (tries - 1), self.retry_max_s)
        self.refused = RefusedSwap(identity[0], identity[1], reason[:500], tries, time.monotonic() + delay)
        if previous is None or previous.identity != identity or previous.reason != self.refused.reason:
            kept = f"still serving {self._champion.name}" if self._champion is not None else "no champion to serve"
            log.error("champion version %d refused: %s; %s; retrying with back-off from %.0f s", identity[0], reason, kept, delay)
        if self._champion is None:
            self.last_error = f"champion version {identity[0]} could not be loaded: {reason[:300]}"
