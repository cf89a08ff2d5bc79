"""Fetch NIH ChestX-ray14 from a Hugging Face *dataset* repository into the local NIH layout.

The rest of the pipeline reads a folder laid out like the NIH download::

    target/
        Data_Entry_2017_v2020.csv     (or the older Data_Entry_2017.csv)
        train_val_list.txt            (optional)
        test_list.txt                 (optional)
        BBox_List_2017.csv            (optional)
        images_001/images/*.png
        ...
        images_012/images/*.png

:func:`fetch_dataset` builds that folder from a dataset repo holding the metadata files and
the twelve ``images_NNN.tar.gz`` archives. Every file goes through
:func:`huggingface_hub.hf_hub_download` (``repo_type="dataset"``): huggingface_hub owns the
cache (``blobs/`` + ``snapshots/<commit>/`` + ``refs/``), resumes interrupted downloads, skips
files already cached, and reads a token from ``HF_TOKEN`` / ``hf auth login`` for gated repos.
No HTTP is done here.

Reproducibility: pin :attr:`HubSource.revision` to a 40-character commit hash (or a tag you
trust not to move). A branch name such as ``"main"`` works but is not reproducible: online it
resolves to whatever the branch points at today, offline to whatever ``refs/main`` in the
local cache says. :func:`fetch_dataset` resolves the revision once, from the first metadata
file, and fetches every archive at that same commit, so one run never mixes two commits.

Offline use: with ``HF_HUB_OFFLINE=1`` huggingface_hub makes no network call and serves files
from its cache only; a file that is not cached raises a :class:`HubFileNotFoundError` (a
``FileNotFoundError``) saying so. huggingface_hub reads ``HF_HUB_OFFLINE`` **once, when it is
imported**; this module also checks the environment variable at call time and then passes
``local_files_only=True``, so setting it later in the process is honoured here too.

Extraction is safe (:mod:`cxrmodel.data.archives` checks every member first) and atomic: the
archive is unpacked into a hidden sibling folder that is moved into place only when complete,
with a marker naming the archive it came from; a re-run re-extracts only a changed archive.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from filelock import FileLock  # a hard dependency of huggingface_hub
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

from cxrmodel.data.archives import UnsafeArchiveError, safe_extract
from cxrmodel.io import atomic_copy, atomic_write_text, sha256_file

logger = logging.getLogger(__name__)

DATA_ENTRY_FILES: tuple[str, ...] = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
DEFAULT_METADATA_FILES: tuple[str, ...] = (
    *DATA_ENTRY_FILES,
    "train_val_list.txt",
    "test_list.txt",
    "BBox_List_2017.csv",
)
DEFAULT_ARCHIVE_PATTERN = "images_{index:03d}.tar.gz"
NIH_ARCHIVES: tuple[int, ...] = tuple(range(1, 13))
MARKER_NAME = ".hub_archive.json"
MARKER_FORMAT = 1

_REPO_TYPE = "dataset"
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_BLOB_RE = re.compile(r"^[0-9a-f]{40}$|^[0-9a-f]{64}$")
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # huggingface_hub.constants.ENV_VARS_TRUE_VALUES


class HubFileNotFoundError(FileNotFoundError):
    """A file of a :class:`HubSource` could not be obtained: not in the repo at that revision,
    or not in the local Hugging Face cache while offline / while the Hub is unreachable."""

    def __init__(self, message: str, *, repo_id: str, revision: str, path_in_repo: str, offline: bool) -> None:
        super().__init__(message)
        self.repo_id = repo_id
        self.revision = revision
        self.path_in_repo = path_in_repo  # not ``filename``: OSError would print it as "[Errno None] ..."
        self.offline = offline


@dataclass(frozen=True)
class HubSource:
    """Where NIH ChestX-ray14 lives on the Hugging Face Hub (a *dataset* repository).

    Attributes:
        repo_id: ``"org/name"`` of the dataset repo.
        revision: a 40-hex commit hash (reproducible) or a tag. A branch name such as
            ``"main"`` is accepted but not reproducible (it moves with the branch).
        metadata_files: paths inside the repo, copied into the target under their base name.
            Missing ones are skipped, but at least one of :data:`DATA_ENTRY_FILES` must be
            found.
        archive_pattern: path inside the repo of archive ``index`` (``str.format`` with
            ``index=``), e.g. ``"images_{index:03d}.tar.gz"`` or
            ``"data/images/images_{index:03d}.tar.gz"``.
        archives: archive indices fetched by default (NIH has 1..12).
        cache_dir: Hugging Face cache folder; ``None`` means huggingface_hub's default
            (``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``).
    """

    repo_id: str
    revision: str
    metadata_files: tuple[str, ...] = DEFAULT_METADATA_FILES
    archive_pattern: str = DEFAULT_ARCHIVE_PATTERN
    archives: tuple[int, ...] = NIH_ARCHIVES
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.repo_id, str) or not self.repo_id.strip():
            raise ValueError("HubSource.repo_id must be a non-empty 'org/name' string")
        if not isinstance(self.revision, str) or not self.revision.strip():
            raise ValueError("HubSource.revision must be a commit hash, tag or branch name")
        object.__setattr__(self, "metadata_files", tuple(self.metadata_files))
        object.__setattr__(self, "archives", _check_indices(self.archives))
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", os.fspath(self.cache_dir))
        bases = [PurePosixPath(f).name for f in self.metadata_files]
        if len(set(bases)) != len(bases):
            raise ValueError(f"HubSource.metadata_files has two files with the same base name: {self.metadata_files}")
        if not any(b in DATA_ENTRY_FILES for b in bases):
            raise ValueError(f"HubSource.metadata_files must include one of {DATA_ENTRY_FILES}")
        try:
            name = self.archive_name(1)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"bad HubSource.archive_pattern {self.archive_pattern!r}: {exc}") from exc
        if name == self.archive_pattern.format(index=2):
            raise ValueError(f"HubSource.archive_pattern {self.archive_pattern!r} must depend on {{index}}")

    def archive_name(self, index: int) -> str:
        """Path inside the repo of archive ``index``."""
        return self.archive_pattern.format(index=index)

    @property
    def pinned(self) -> bool:
        """True when :attr:`revision` is a full commit hash (fully reproducible)."""
        return bool(_COMMIT_RE.match(self.revision))


# --------------------------------------------------------------------------------------
# Downloading through huggingface_hub


def _env_true(name: str) -> bool:
    value = os.environ.get(name)
    return value is not None and value.strip().upper() in _TRUE_VALUES


def hub_offline() -> bool:
    """Whether Hugging Face offline mode is on: huggingface_hub's own flag (read when it was
    imported) or ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set in the environment now."""
    is_offline = getattr(hf_constants, "is_offline_mode", None)
    flag = is_offline() if callable(is_offline) else getattr(hf_constants, "HF_HUB_OFFLINE", False)
    return bool(flag) or _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def _cache_location(source: HubSource) -> str:
    return source.cache_dir if source.cache_dir is not None else str(hf_constants.HF_HUB_CACHE)


def _describe_missing(source: HubSource, filename: str, exc: BaseException, offline: bool) -> str:
    where = f"{filename!r} of dataset repo {source.repo_id!r} at revision {source.revision!r}"
    if isinstance(exc, LocalEntryNotFoundError):
        cache = _cache_location(source)
        if offline:
            return (
                f"{where} is not in the local Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set; "
                "unset HF_HUB_OFFLINE to download it, or fill the cache beforehand"
            )
        return f"{where} is not in the local Hugging Face cache ({cache}) and the Hub could not be reached: {exc}"
    return f"{where} does not exist on the Hub: {exc}"


def _download(source: HubSource, filename: str) -> Path:
    """``hf_hub_download`` one file; a missing file becomes :class:`HubFileNotFoundError`.

    Other Hub errors (repository or revision not found, gated repo, bad token) propagate.
    """
    offline = hub_offline()
    try:
        path = hf_hub_download(
            repo_id=source.repo_id,
            filename=filename,
            repo_type=_REPO_TYPE,
            revision=source.revision,
            cache_dir=source.cache_dir,
            local_files_only=offline,
        )
    except EntryNotFoundError as exc:  # RemoteEntryNotFoundError (404) or LocalEntryNotFoundError
        raise HubFileNotFoundError(
            _describe_missing(source, filename, exc, offline),
            repo_id=source.repo_id,
            revision=source.revision,
            path_in_repo=filename,
            offline=offline,
        ) from exc
    return Path(path)


def _commit_of(cached: Path, filename: str) -> str | None:
    """The commit hash from a cache path ``.../snapshots/<commit>/<filename>``, else ``None``."""
    snapshot = cached
    for _ in PurePosixPath(filename).parts:
        snapshot = snapshot.parent
    if snapshot.parent.name == "snapshots" and _COMMIT_RE.match(snapshot.name):
        return snapshot.name
    return None


# --------------------------------------------------------------------------------------
# Small file helpers


def _remove(path: Path) -> None:
    """Remove a file, symlink or folder tree; no error if absent."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path)


# --------------------------------------------------------------------------------------
# Metadata


def _fetch_metadata(source: HubSource, target_dir: Path) -> tuple[dict[str, Path], str | None]:
    target_dir.mkdir(parents=True, exist_ok=True)
    fetched: dict[str, Path] = {}
    tried: list[str] = []
    commit: str | None = None
    offline = hub_offline()
    for filename in source.metadata_files:
        base = PurePosixPath(filename).name
        try:
            cached = _download(source, filename)
        except HubFileNotFoundError as exc:
            reason = "not cached" if isinstance(exc.__cause__, LocalEntryNotFoundError) else "not in repo"
            tried.append(f"{filename} ({reason})")
            logger.info("skipping metadata file: %s", exc)
            continue
        commit = commit or _commit_of(cached, filename)
        dest = target_dir / base
        atomic_copy(cached, dest)
        fetched[base] = dest
        tried.append(f"{filename} (found)")
    if not any(name in fetched for name in DATA_ENTRY_FILES):
        data_entry = [f for f in source.metadata_files if PurePosixPath(f).name in DATA_ENTRY_FILES]
        message = (
            f"no NIH Data_Entry file found in dataset repo {source.repo_id!r} at revision {source.revision!r}; "
            f"tried {', '.join(data_entry)} (all metadata: {'; '.join(tried)})"
        )
        if offline:
            message += f". They are not in the local Hugging Face cache ({_cache_location(source)}) and HF_HUB_OFFLINE is set"
        raise FileNotFoundError(message)
    return fetched, commit


def fetch_metadata(source: HubSource, target_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Download (or take from the cache) each of ``source.metadata_files`` and copy it into
    ``target_dir`` under its base name (atomically).

    Returns ``{base name: path in target_dir}`` for the files found. Missing optional files
    are skipped; raises ``FileNotFoundError`` naming the repo, revision and the files tried when
    no ``Data_Entry`` file is available (also offline, when none is cached).
    """
    fetched, _ = _fetch_metadata(source, Path(target_dir))
    return fetched


def _archive_identity(cached: Path) -> dict[str, str]:
    """What the marker compares: the cache blob's name (its etag: the sha256 for LFS/Xet
    files) when the snapshot entry links into ``blobs/``, else the file's sha256."""
    resolved = cached.resolve()
    if cached.is_symlink() and resolved.parent.name == "blobs" and _BLOB_RE.match(resolved.name):
        return {"kind": "hf-blob", "value": resolved.name}
    return {"kind": "sha256", "value": sha256_file(resolved)}


def _read_marker(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _check_indices(indices: Iterable[int]) -> tuple[int, ...]:
    out: list[int] = []
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= 999:
            raise ValueError(f"archive index must be an integer in 1..999, got {index!r}")
        if index not in out:
            out.append(index)
    return tuple(out)


def _extract_one(source: HubSource, index: int, target_dir: Path) -> Path:
    filename = source.archive_name(index)
    cached = _download(source, filename)
    identity = _archive_identity(cached)
    folder_name = f"images_{index:03d}"
    final = target_dir / folder_name
    with FileLock(str(target_dir / f".{folder_name}.lock")):
        marker = _read_marker(final) if final.is_dir() and not final.is_symlink() else None
        if marker is not None and marker.get("archive") == identity:
            logger.info("%s already extracted from %s (%s)", folder_name, filename, identity["value"][:12])
            return final
        for stale in [*target_dir.glob(f".{folder_name}.partial-*"), *target_dir.glob(f".{folder_name}.old-*")]:
            _remove(stale)  # left by an interrupted run; we hold the lock
        tmp = Path(tempfile.mkdtemp(dir=target_dir, prefix=f".{folder_name}.partial-"))
        old: Path | None = None
        try:
            tmp.chmod(0o755)  # mkdtemp makes it 0o700
            count = safe_extract(cached, tmp, filename)
            record = {
                "format": MARKER_FORMAT,
                "repo_id": source.repo_id,
                "revision": source.revision,
                "commit": _commit_of(cached, filename),
                "filename": filename,
                "archive": identity,
                "files": count,
            }
            atomic_write_text(tmp / MARKER_NAME, json.dumps(record, indent=2, sort_keys=True) + "\n")
            if final.exists() or final.is_symlink():
                old = target_dir / f".{folder_name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(final, old)
            os.replace(tmp, final)
        except BaseException:
            _remove(tmp)
            raise
        if old is not None:
            _remove(old)
    logger.info("extracted %s from %s into %s", folder_name, filename, final)
    return final


def fetch_archives(source: HubSource, target_dir: str | os.PathLike[str], indices: Iterable[int] | None = None) -> list[Path]:
    """Download each archive (``source.archives`` unless ``indices`` is given) with
    ``hf_hub_download`` and extract it safely to ``target_dir/images_NNN/images/``.

    huggingface_hub resumes a partial download and serves an already cached archive without
    downloading it again. Members ``images/x.png`` and bare ``x.png`` both land in
    ``images_NNN/images/x.png``. An archive already extracted from the same file (per the
    marker in ``images_NNN/``) is skipped; a changed archive is re-extracted and replaces the
    folder atomically. Returns the ``images_NNN`` folders in the order requested.

    Raises :class:`UnsafeArchiveError` (nothing extracted) for an unsafe member, and
    :class:`HubFileNotFoundError` when an archive is not in the repo or, offline, not cached.
    """
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    wanted = source.archives if indices is None else _check_indices(indices)
    return [_extract_one(source, index, target) for index in wanted]


def fetch_dataset(source: HubSource, target_dir: str | os.PathLike[str], indices: Iterable[int] | None = None) -> Path:
    """Metadata first (:func:`fetch_metadata`), then the image archives
    (:func:`fetch_archives`); returns ``target_dir``.

    The revision is resolved once, from the first metadata file, and every archive is fetched
    at that commit, so a moving branch cannot mix two commits within one run.
    """
    target = Path(target_dir)
    _, commit = _fetch_metadata(source, target)
    pinned = replace(source, revision=commit) if commit and commit != source.revision else source
    fetch_archives(pinned, target, indices)
    return target


__all__ = [
    "DATA_ENTRY_FILES",
    "DEFAULT_ARCHIVE_PATTERN",
    "DEFAULT_METADATA_FILES",
    "MARKER_NAME",
    "HubFileNotFoundError",
    "HubSource",
    "UnsafeArchiveError",
    "fetch_archives",
    "fetch_dataset",
    "fetch_metadata",
    "hub_offline",
]
