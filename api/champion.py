"""The champion, loaded once per process and swapped when the registry names another.

:meth:`ChampionHolder.current` asks the registry (two indexed queries) at most every
``ttl_s`` seconds; a new champion (or a new active threshold set) is loaded in a worker thread
while requests keep being served by the old one, then swapped in one assignment. A request
holds the :class:`Champion` it started with to the end, so it is scored, thresholded and
stored with one version and one threshold set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

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


class ChampionHolder:
    """The process's champion (see the module docstring)."""

    def __init__(self, database_url: str, ttl_s: float = 2.0) -> None:
        self.database_url = database_url
        self.ttl_s = ttl_s
        self._champion: Champion | None = None
        self._checked_at = float("-inf")
        self._lock = asyncio.Lock()
        self.last_error: str | None = None

    @property
    def loaded(self) -> Champion | None:
        return self._champion

    async def current(self) -> Champion:
        """The champion now (``NoChampion`` when the registry has none usable)."""
        if time.monotonic() - self._checked_at >= self.ttl_s or self._champion is None:
            async with self._lock:
                if time.monotonic() - self._checked_at >= self.ttl_s or self._champion is None:
                    await self._refresh()
        if self._champion is None:
            raise NoChampion(self.last_error or "no champion model version")
        return self._champion

    async def _refresh(self) -> None:
        try:
            identity = await asyncio.to_thread(_registry_identity, self.database_url)
            if identity is None:
                self._champion = None
                self.last_error = "no champion model version with an active threshold set: train, evaluate and promote one"
            elif self._champion is None or self._champion.identity != identity:
                loaded = await asyncio.to_thread(load_champion, self.database_url, self._champion)
                if self._champion is not None:
                    log.info("champion swapped: %s -> %s", self._champion.name, loaded.name)
                self._champion, self.last_error = loaded, None
        except NoChampion as exc:
            self._champion, self.last_error = None, str(exc)
        self._checked_at = time.monotonic()
