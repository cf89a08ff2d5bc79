"""File helpers every stage shares: a file's sha256 (of many files, in threads), atomic writes, and
the check that an input folder is there.

An atomic write goes to a temporary file beside the target, is flushed to disk, then moved
over the target with ``os.replace``: a reader sees the old file or the whole new one, never a
part, and a crash leaves no half-written target (the temporary file is removed on error).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from cxrmodel.errors import UserError

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str], chunk: int = CHUNK) -> str:
    """Hex SHA-256 of a file's bytes, read ``chunk`` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_files(
    paths: Sequence[str | os.PathLike[str]], threads: int = 4, on_progress: Callable[[int, int], None] | None = None
) -> list[str]:
    """:func:`sha256_file` of each path, in order, ``threads`` at a time (hashlib and file reads
    release the GIL, so a refresh of many small images is bound by the disk, not one core).
    ``on_progress(done, total)`` follows the files (:data:`cxrmodel.progress.ProgressCallback`)."""
    if threads <= 1 or len(paths) < 2:
        results = map(sha256_file, paths)
        return _with_progress(results, len(paths), on_progress)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cxr-sha256") as pool:
        return _with_progress(pool.map(sha256_file, paths, chunksize=64), len(paths), on_progress)


def _with_progress(results, total: int, on_progress: Callable[[int, int], None] | None) -> list:
    done = []
    for value in results:
        done.append(value)
        if on_progress is not None and (len(done) % 16 == 0 or len(done) == total):
            on_progress(len(done), total)
    return done


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path`` (folders created), then move
    it into place. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the report server and other readers need to read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode(encoding)))


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Copy ``src`` (symlinks followed) to ``dst`` atomically."""
    with open(src, "rb") as source:
        return atomic_write(dst, lambda fh: shutil.copyfileobj(source, fh, CHUNK))


def atomic_save_to(path: str | os.PathLike[str], save: Callable[[str], object]) -> Path:
    """For writers that need a file *name* (safetensors, PIL with a format, pydicom): call
    ``save(temp_name)`` beside ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class MissingInputError(UserError, FileNotFoundError):
    """A folder or file a run was told to read is not there: the user's to fix, never retried."""


def require_folder(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` resolved, or :class:`MissingInputError` naming ``what`` when it is not a folder."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise MissingInputError(f"{what} {folder} does not exist or is not a folder")
    return folder.resolve()
