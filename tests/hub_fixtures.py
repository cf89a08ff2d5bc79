"""A hand-built Hugging Face cache for the hub tests: no network, ever.

The cache follows huggingface_hub's on-disk layout for a dataset repo (see its
``file_download.py``: ``repo_folder_name`` / ``_get_pointer_path`` /
``_cache_commit_hash_for_specific_revision``)::

    <cache>/datasets--<org>--<name>/blobs/<etag>
    <cache>/datasets--<org>--<name>/snapshots/<40-hex commit>/<path in repo>  -> ../../blobs/<etag>
    <cache>/datasets--<org>--<name>/refs/main                                  (commit, no newline)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import socket
import tarfile
from pathlib import Path

import huggingface_hub.constants as hf_constants
import huggingface_hub.file_download as hf_file_download
import pytest

from cxrmodel.data.hub import (
    HubSource,
)
from cxrmodel.data.metadata import locate_images, read_nih_metadata

FIXTURES = Path(__file__).parent / "fixtures" / "nih-sample"
KEYS_001 = ("00000001_000.png", "00000002_000.png")
KEYS_002 = ("00000013_003.png",)
KEYS = KEYS_001 + KEYS_002
REPO_ID = "nih-test-org/chestxray14"


# --------------------------------------------------------------------------------------
# A fake, on-disk Hugging Face cache


class FakeHubCache:
    """Writes commits of a dataset repo into a cache folder the way hf_hub_download does."""

    def __init__(self, root: Path, repo_id: str = REPO_ID, symlinks: bool = True) -> None:
        self.root = root
        self.repo_id = repo_id
        self.symlinks = symlinks
        sep = hf_constants.REPO_ID_SEPARATOR
        self.repo_dir = root / sep.join(["datasets", *repo_id.split("/")])
        assert self.repo_dir.name == hf_file_download.repo_folder_name(repo_id=repo_id, repo_type="dataset")
        self._count = 0

    def commit(self, files: dict[str, bytes], ref: str | None = "main") -> str:
        """Store a snapshot holding ``files``; point ``refs/<ref>`` at it; return its hash."""
        self._count += 1
        commit = hashlib.sha1(f"{self.repo_id}@{self._count}".encode()).hexdigest()
        for path_in_repo, data in files.items():
            etag = hashlib.sha256(data).hexdigest()  # LFS files: the etag is the content sha256
            blob = self.repo_dir / "blobs" / etag
            blob.parent.mkdir(parents=True, exist_ok=True)
            if not blob.exists():
                blob.write_bytes(data)
            pointer = self.repo_dir / "snapshots" / commit / path_in_repo
            pointer.parent.mkdir(parents=True, exist_ok=True)
            if self.symlinks:
                pointer.symlink_to(os.path.relpath(blob, pointer.parent))
            else:
                pointer.write_bytes(data)
        (self.repo_dir / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        if ref is not None:
            (self.repo_dir / "refs").mkdir(parents=True, exist_ok=True)
            (self.repo_dir / "refs" / ref).write_text(commit)  # hf reads it without strip()
        return commit


def _data_entry_csv(keys=KEYS) -> bytes:
    lines = (FIXTURES / "Data_Entry_2017_v2020.sample.csv").read_text(encoding="utf-8").splitlines()
    rows = {line.split(",", 1)[0]: line for line in lines[1:]}
    return ("\n".join([lines[0], *(rows[k] for k in keys)]) + "\n").encode()


def _png(key: str) -> bytes:
    return (FIXTURES / "images" / key).read_bytes()


def _tar_gz(entries: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    """A .tar.gz with a fixed gzip mtime: the same entries always give the same bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = 1_500_000_000
                tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


def _archive(keys, prefix: str = "images/") -> bytes:
    return _tar_gz([(prefix + k, _png(k)) for k in keys])


def _repo_files(**overrides: bytes | None) -> dict[str, bytes]:
    files: dict[str, bytes | None] = {
        "Data_Entry_2017_v2020.csv": _data_entry_csv(),
        "train_val_list.txt": b"00000001_000.png\n00000002_000.png\n",
        "test_list.txt": b"00000013_003.png\n",
        "images_001.tar.gz": _archive(KEYS_001),
        "images_002.tar.gz": _archive(KEYS_002),
    }
    files.update(overrides)
    return {k: v for k, v in files.items() if v is not None}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Offline mode as huggingface_hub sees it (its constants are read at import time, so
    the env var alone is not enough once it is imported), plus a socket guard."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted in a test: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def cache(tmp_path) -> FakeHubCache:
    return FakeHubCache(tmp_path / "hf-cache")


def _source(cache: FakeHubCache, revision: str, **kwargs) -> HubSource:
    kwargs.setdefault("archives", (1, 2))
    return HubSource(repo_id=cache.repo_id, revision=revision, cache_dir=str(cache.root), **kwargs)


def _assert_nih_layout(target: Path) -> None:
    result = read_nih_metadata(target / "Data_Entry_2017_v2020.csv")
    assert result.quarantined == []
    assert sorted(result.studies["study_key"]) == sorted(KEYS)
    found = locate_images(target, result.studies["study_key"])
    assert set(found) == set(KEYS)
    for key in KEYS_001:
        assert found[key] == target / "images_001" / "images" / key
    assert found[KEYS_002[0]] == target / "images_002" / "images" / KEYS_002[0]
    for key, path in found.items():
        assert path.read_bytes() == _png(key)


def _leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.iterdir() if ".partial-" in p.name or ".old-" in p.name)
