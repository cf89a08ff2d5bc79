"""Decode each image once into a resized ``uint8`` ``.npy`` cache.

Layout: ``root/<size>px/<sha256(key)[:2]>/<key stem>.npy`` plus a sidecar
``<key stem>.json`` recording the key, the source's ``(size, mtime_ns)`` and, when the caller
knows it, the source's content hash (the sha256 the refresh stored in ``studies.content_hash``).

Freshness: a caller that passes the content hash gets the entry written for exactly that
content, whatever the file's times say (the file was hashed once, at ingest; the cache never
hashes it again). A caller without one gets the entry only while the source's size and mtime
are unchanged, so replacing or touching a source invalidates it. Both files are written
atomically (temp file + ``os.replace``), the array first, so a reader never sees a
half-written entry, and concurrent writers of the same entry just race to an identical result.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from cxrmodel.data.imaging import ImageDecodeError, is_plain_file_name, read_grayscale, resize_square
from cxrmodel.io import atomic_write
from cxrmodel.progress import ProgressCallback, report

#: A cache temporary older than this (seconds) is an orphan of a killed writer.
STALE_TEMPORARY_S = 300.0


class ImageCache:
    """Resized grey images keyed by study key (a plain file name such as ``'00000001_000.png'``)."""

    def __init__(self, root: str | os.PathLike[str], size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.root = Path(root)
        self.size = int(size)
        self.dir = self.root / f"{self.size}px"

    def paths(self, key: str) -> tuple[Path, Path]:
        """(array path, sidecar path) for ``key``; ``ValueError`` unless it is a plain file name."""
        if not is_plain_file_name(key):
            raise ValueError(f"cache key must be a plain file name, got {key!r}")
        shard = hashlib.sha256(key.encode("utf-8")).hexdigest()[:2]
        stem = Path(key).stem or key
        folder = self.dir / shard
        return folder / f"{stem}.npy", folder / f"{stem}.json"

    @staticmethod
    def _source_stamp(source_path: Path) -> dict[str, int]:
        try:
            st = source_path.stat()
        except FileNotFoundError:
            raise ImageDecodeError("missing file", source_path) from None
        return {"source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns}

    def _load_fresh(self, key: str, wanted: dict[str, object]) -> np.ndarray | None:
        """The cached array if its sidecar has every ``wanted`` value and it loads cleanly, else ``None``."""
        array_path, meta_path = self.paths(key)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("key") != key or any(meta.get(k) != v for k, v in wanted.items()):
                return None
            arr = np.load(array_path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if arr.shape != (self.size, self.size) or arr.dtype != np.uint8:
            return None
        return arr

    def _wanted(self, source: Path, content_hash: str | None) -> dict[str, object]:
        """What a fresh entry's sidecar must say: the content hash, or else the source's stamp."""
        return {"content_hash": content_hash} if content_hash else self._source_stamp(source)

    def is_fresh(self, key: str, source_path: str | os.PathLike[str], content_hash: str | None = None) -> bool:
        """True when a valid entry exists for that content (or for the source as it is now)."""
        try:
            wanted = self._wanted(Path(source_path), content_hash)
        except ImageDecodeError:
            return False
        return self._load_fresh(key, wanted) is not None

    def get(self, key: str, source_path: str | os.PathLike[str], content_hash: str | None = None) -> np.ndarray:
        """``uint8`` ``[size, size]`` for ``key``: cached, or decoded, resized and stored.

        With ``content_hash`` (the source's sha256 as ingested) the entry of that content is
        used; without it, the entry of the source's current size and mtime. Raises
        :class:`ImageDecodeError` when the source cannot be decoded and ``ValueError`` for a
        key that is not a plain file name.
        """
        source = Path(source_path)
        self.paths(key)  # validate the key before touching anything
        cached = self._load_fresh(key, self._wanted(source, content_hash))
        if cached is not None:
            return cached
        stamp = self._source_stamp(source)
        image = resize_square(read_grayscale(source), self.size)
        array_path, meta_path = self.paths(key)
        atomic_write(array_path, lambda fh: np.save(fh, image, allow_pickle=False))
        meta = {"key": key, "size": self.size, **stamp, **({"content_hash": content_hash} if content_hash else {})}
        atomic_write(meta_path, lambda fh: fh.write(json.dumps(meta).encode("utf-8")))
        return image

    def ensure(self, key: str, source_path: str | os.PathLike[str], content_hash: str | None = None) -> str | None:
        """Make sure ``key`` is cached; returns ``None`` or the failure reason."""
        try:
            if not self.is_fresh(key, source_path, content_hash):
                self.get(key, source_path, content_hash)
        except (ImageDecodeError, ValueError) as exc:
            return str(exc)
        return None

    def remove_stale_temporaries(self, older_than_s: float = STALE_TEMPORARY_S) -> int:
        """Delete the temporary files (``.<name>.<random>.tmp``) that a killed writer left in
        this size's folder, once they are ``older_than_s`` old: a live writer replaces its own
        within seconds, so an old one is an orphan no later write would ever remove. Returns
        how many were removed."""
        if not self.dir.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        removed = 0
        for path in self.dir.glob("*/.*.tmp"):
            try:
                if path.is_file() and not path.is_symlink() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # another refresh removed it first
                continue
        return removed

    def build(self, items: Iterable[tuple], workers: int = 0, on_progress: ProgressCallback | None = None) -> dict[str, str]:
        """Fill the cache for ``(key, source_path)`` or ``(key, source_path, content_hash)``
        items; returns failures ``key -> reason``. Stale temporaries of killed writers are
        removed first (:meth:`remove_stale_temporaries`).

        Decode errors and invalid keys are reported, not raised. ``workers > 0`` decodes in
        a :class:`~concurrent.futures.ProcessPoolExecutor` with that many processes.
        ``on_progress(done, total)`` follows the images as they are done.
        """
        self.remove_stale_temporaries()
        jobs = [(key, str(path), rest[0] if rest else None) for key, path, *rest in items]
        reasons: list[str | None] = []
        if workers <= 0:
            for job in jobs:
                reasons.append(self.ensure(*job))
                report(on_progress, len(reasons), len(jobs))
        else:
            chunksize = max(1, len(jobs) // (workers * 8))
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for reason in pool.map(_ensure_one, [(str(self.root), self.size, *job) for job in jobs], chunksize=chunksize):
                    reasons.append(reason)
                    report(on_progress, len(reasons), len(jobs))
        return {key: reason for (key, _, _), reason in zip(jobs, reasons, strict=True) if reason is not None}


def _ensure_one(args: tuple[str, int, str, str, str | None]) -> str | None:
    """Worker-process entry point for :meth:`ImageCache.build` (module level: picklable)."""
    root, size, key, path, content_hash = args
    return ImageCache(root, size).ensure(key, path, content_hash)


def cached_loader(cache: ImageCache, frame: pd.DataFrame) -> Callable[[int], np.ndarray]:
    """``i -> uint8 [S, S]`` reading row ``i`` of ``frame`` (``study_key``, ``image_path`` and,
    when present, ``content_hash``) through the image cache."""
    keys = frame["study_key"].tolist()
    paths = [Path(p) for p in frame["image_path"]]
    hashes = [h if isinstance(h, str) and h else None for h in frame.get("content_hash", [None] * len(keys))]
    return lambda i: cache.get(keys[i], paths[i], hashes[i])
