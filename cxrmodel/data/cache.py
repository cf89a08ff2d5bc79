"""Decode each image once into a resized ``uint8`` ``.npy`` cache.

Layout: ``root/<size>px/<sha256(key)[:2]>/<key stem>.npy`` plus a sidecar
``<key stem>.json`` recording the key and the source's ``(size, mtime_ns)``. An entry is
used only when its sidecar matches the source file as it is now, so replacing or touching
a source invalidates it. Both files are written atomically (temp file + ``os.replace``),
the array first, so a reader never sees a half-written entry, and concurrent writers of
the same entry just race to an identical result.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from cxrmodel.io import atomic_write
from cxrmodel.data.imaging import ImageDecodeError, is_plain_file_name, read_grayscale, resize_square


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

    def _load_fresh(self, key: str, stamp: dict[str, int]) -> np.ndarray | None:
        """The cached array if its sidecar matches ``stamp`` and it loads cleanly, else ``None``."""
        array_path, meta_path = self.paths(key)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("key") != key or any(meta.get(k) != v for k, v in stamp.items()):
                return None
            arr = np.load(array_path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if arr.shape != (self.size, self.size) or arr.dtype != np.uint8:
            return None
        return arr

    def is_fresh(self, key: str, source_path: str | os.PathLike[str]) -> bool:
        """True when a valid entry for the source as it is now exists."""
        try:
            stamp = self._source_stamp(Path(source_path))
        except ImageDecodeError:
            return False
        return self._load_fresh(key, stamp) is not None

    def get(self, key: str, source_path: str | os.PathLike[str]) -> np.ndarray:
        """``uint8`` ``[size, size]`` for ``key``: cached, or decoded, resized and stored.

        Raises :class:`ImageDecodeError` when the source cannot be decoded and
        ``ValueError`` for a key that is not a plain file name.
        """
        source = Path(source_path)
        self.paths(key)  # validate the key before touching anything
        stamp = self._source_stamp(source)
        cached = self._load_fresh(key, stamp)
        if cached is not None:
            return cached
        image = resize_square(read_grayscale(source), self.size)
        array_path, meta_path = self.paths(key)
        atomic_write(array_path, lambda fh: np.save(fh, image, allow_pickle=False))
        meta = {"key": key, "size": self.size, **stamp}
        atomic_write(meta_path, lambda fh: fh.write(json.dumps(meta).encode("utf-8")))
        return image

    def ensure(self, key: str, source_path: str | os.PathLike[str]) -> str | None:
        """Make sure ``key`` is cached; returns ``None`` or the failure reason."""
        try:
            if not self.is_fresh(key, source_path):
                self.get(key, source_path)
        except (ImageDecodeError, ValueError) as exc:
            return str(exc)
        return None

    def build(self, items: Iterable[tuple[str, str | os.PathLike[str]]], workers: int = 0) -> dict[str, str]:
        """Fill the cache for ``(key, source_path)`` pairs; returns failures ``key -> reason``.

        Decode errors and invalid keys are reported, not raised. ``workers > 0`` decodes in
        a :class:`~concurrent.futures.ProcessPoolExecutor` with that many processes.
        """
        pairs = [(key, Path(path)) for key, path in items]
        failures: dict[str, str] = {}
        if workers <= 0:
            for key, path in pairs:
                reason = self.ensure(key, path)
                if reason is not None:
                    failures[key] = reason
            return failures
        chunksize = max(1, len(pairs) // (workers * 8))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(
                _ensure_one,
                [(str(self.root), self.size, key, str(path)) for key, path in pairs],
                chunksize=chunksize,
            )
            for (key, _), reason in zip(pairs, results, strict=True):
                if reason is not None:
                    failures[key] = reason
        return failures


def _ensure_one(args: tuple[str, int, str, str]) -> str | None:
    """Worker-process entry point for :meth:`ImageCache.build` (module level: picklable)."""
    root, size, key, path = args
    return ImageCache(root, size).ensure(key, path)
