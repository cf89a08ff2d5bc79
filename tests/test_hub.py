"""cxrmodel.data.hub against a hand-built Hugging Face cache: no network, ever.

The cache follows huggingface_hub's on-disk layout for a dataset repo (see its
``file_download.py``: ``repo_folder_name`` / ``_get_pointer_path`` /
``_cache_commit_hash_for_specific_revision``)::

    <cache>/datasets--<org>--<name>/blobs/<etag>
    <cache>/datasets--<org>--<name>/snapshots/<40-hex commit>/<path in repo>  -> ../../blobs/<etag>
    <cache>/datasets--<org>--<name>/refs/main                                  (commit, no newline)
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import io
import json
import os
import socket
import tarfile
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants as hf_constants
import huggingface_hub.file_download as hf_file_download
import pytest

from cxrmodel.data import hub
from cxrmodel.data.hub import (
    HubFileNotFoundError,
    HubSource,
    UnsafeArchiveError,
    fetch_archives,
    fetch_dataset,
    fetch_metadata,
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


# --------------------------------------------------------------------------------------
# Happy path


def test_fetch_dataset_offline_builds_nih_layout(cache, tmp_path):
    commit = cache.commit(_repo_files())
    target = tmp_path / "nih"

    assert fetch_dataset(_source(cache, commit), target) == target

    _assert_nih_layout(target)
    assert (target / "train_val_list.txt").read_text() == "00000001_000.png\n00000002_000.png\n"
    assert (target / "test_list.txt").read_text() == "00000013_003.png\n"
    assert not (target / "BBox_List_2017.csv").exists()  # not in the repo: skipped silently
    assert not (target / "Data_Entry_2017.csv").exists()
    assert _leftovers(target) == []
    marker = json.loads((target / "images_001" / hub.MARKER_NAME).read_text())
    assert marker["commit"] == commit
    assert marker["filename"] == "images_001.tar.gz"
    blob = hashlib.sha256(_repo_files()["images_001.tar.gz"]).hexdigest()
    assert marker["archive"] == {"kind": "hf-blob", "value": blob}
    assert marker["files"] == 2


def test_fetch_metadata_returns_copies_not_cache_links(cache, tmp_path):
    commit = cache.commit(_repo_files())
    target = tmp_path / "nih"

    files = fetch_metadata(_source(cache, commit), target)

    assert set(files) == {"Data_Entry_2017_v2020.csv", "train_val_list.txt", "test_list.txt"}
    for name, path in files.items():
        assert path == target / name
        assert path.is_file() and not path.is_symlink()
    assert files["Data_Entry_2017_v2020.csv"].read_bytes() == _data_entry_csv()
    assert not list(target.glob("images_*"))  # metadata only


def test_revision_main_resolves_through_refs(cache, tmp_path):
    old = cache.commit(_repo_files(**{"images_002.tar.gz": _archive(KEYS_002, prefix="")}))
    new = cache.commit(_repo_files())  # refs/main -> new
    assert (cache.repo_dir / "refs" / "main").read_text() == new

    target = tmp_path / "via-main"
    fetch_dataset(_source(cache, "main"), target)
    _assert_nih_layout(target)
    marker = json.loads((target / "images_002" / hub.MARKER_NAME).read_text())
    assert marker["commit"] == new
    assert marker["revision"] == new  # fetch_dataset pins the archives to the metadata's commit

    pinned = tmp_path / "pinned-old"
    fetch_dataset(_source(cache, old), pinned)
    assert json.loads((pinned / "images_002" / hub.MARKER_NAME).read_text())["commit"] == old


def test_default_cache_dir_is_huggingface_hub_cache(cache, tmp_path, monkeypatch):
    commit = cache.commit(_repo_files())
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache.root))  # HF_HUB_CACHE / HF_HOME, read at import

    target = fetch_dataset(HubSource(repo_id=REPO_ID, revision=commit, archives=(1, 2)), tmp_path / "nih")

    _assert_nih_layout(target)


def test_bare_members_and_archive_subfolder(cache, tmp_path):
    commit = cache.commit(
        {
            "meta/Data_Entry_2017_v2020.csv": _data_entry_csv(),
            "data/images/images_001.tar.gz": _archive(KEYS_001, prefix=""),  # bare names
            "data/images/images_002.tar.gz": _archive(KEYS_002, prefix="./images_002/images/"),
        }
    )
    source = _source(
        cache,
        commit,
        metadata_files=("meta/Data_Entry_2017_v2020.csv", "meta/BBox_List_2017.csv"),
        archive_pattern="data/images/images_{index:03d}.tar.gz",
    )
    target = tmp_path / "nih"

    fetch_dataset(source, target)

    _assert_nih_layout(target)
    assert sorted(p.name for p in target.iterdir() if not p.name.startswith(".")) == [
        "Data_Entry_2017_v2020.csv",
        "images_001",
        "images_002",
    ]


@pytest.mark.parametrize("keys", [("Data_Entry_2017.csv",), ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")])
def test_old_data_entry_file_is_enough(cache, tmp_path, keys):
    files = _repo_files(**{"Data_Entry_2017_v2020.csv": None})
    files["Data_Entry_2017.csv"] = _data_entry_csv()
    commit = cache.commit(files)

    got = fetch_metadata(_source(cache, commit, metadata_files=keys), tmp_path / "nih")

    assert set(got) == {"Data_Entry_2017.csv"}
    assert len(read_nih_metadata(got["Data_Entry_2017.csv"]).studies) == 3


# --------------------------------------------------------------------------------------
# Re-runs


def test_rerun_skips_extraction(cache, tmp_path, monkeypatch):
    commit = cache.commit(_repo_files())
    source = _source(cache, commit)
    target = tmp_path / "nih"
    fetch_dataset(source, target)
    image = target / "images_001" / "images" / KEYS_001[0]
    before = (image.stat().st_ino, (target / "images_001").stat().st_ino)
    marker_before = (target / "images_001" / hub.MARKER_NAME).read_bytes()

    def no_extraction(*args, **kwargs):
        raise AssertionError("archive reopened although already extracted")

    monkeypatch.setattr(tarfile, "open", no_extraction)
    folders = fetch_archives(source, target)

    assert folders == [target / "images_001", target / "images_002"]
    assert (image.stat().st_ino, (target / "images_001").stat().st_ino) == before
    assert (target / "images_001" / hub.MARKER_NAME).read_bytes() == marker_before


@pytest.mark.parametrize("symlinks", [True, False], ids=["blob-symlinks", "plain-copies"])
def test_changed_archive_is_reextracted(tmp_path, monkeypatch, symlinks):
    cache = FakeHubCache(tmp_path / "hf-cache", symlinks=symlinks)
    first = cache.commit(_repo_files())
    target = tmp_path / "nih"
    fetch_dataset(_source(cache, first), target)
    old_dir_inode = (target / "images_001").stat().st_ino
    untouched = target / "images_002" / "images" / KEYS_002[0]
    untouched_inode = untouched.stat().st_ino

    changed = _tar_gz([("images/" + KEYS_001[0], b"new bytes"), ("images/00000099_000.png", b"extra")])
    second = cache.commit(_repo_files(**{"images_001.tar.gz": changed}))
    fetch_archives(_source(cache, second), target)

    images = target / "images_001" / "images"
    assert (images / KEYS_001[0]).read_bytes() == b"new bytes"
    assert (images / "00000099_000.png").read_bytes() == b"extra"
    assert not (images / KEYS_001[1]).exists()  # the old folder was replaced, not merged
    assert (target / "images_001").stat().st_ino != old_dir_inode
    marker = json.loads((target / "images_001" / hub.MARKER_NAME).read_text())
    assert marker["commit"] == second
    assert marker["archive"]["kind"] == ("hf-blob" if symlinks else "sha256")
    assert marker["archive"]["value"] == hashlib.sha256(changed).hexdigest()
    assert untouched.stat().st_ino == untouched_inode  # same archive content at the new commit: skipped
    assert _leftovers(target) == []


def test_folder_without_marker_is_replaced(cache, tmp_path):
    commit = cache.commit(_repo_files())
    target = tmp_path / "nih"
    (target / "images_001" / "images").mkdir(parents=True)
    (target / "images_001" / "images" / "half-written.png").write_bytes(b"x")

    fetch_archives(_source(cache, commit), target, indices=[1])

    assert sorted(p.name for p in (target / "images_001" / "images").iterdir()) == sorted(KEYS_001)


# --------------------------------------------------------------------------------------
# Unsafe archives


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


UNSAFE = {
    "dotdot": lambda root: ("../evil.png", b"evil"),
    "nested-dotdot": lambda root: ("images/../../evil.png", b"evil"),
    "absolute": lambda root: (str(root / "evil.png"), b"evil"),
    "symlink": lambda root: _special("images/evil.png", tarfile.SYMTYPE, "../../evil.png"),
    "symlink-abs": lambda root: _special("images/evil.png", tarfile.SYMTYPE, str(root / "evil.png")),
    "hardlink": lambda root: _special("images/evil.png", tarfile.LNKTYPE, "images/00000001_000.png"),
    "fifo": lambda root: _special("images/evil.png", tarfile.FIFOTYPE),
    "char-device": lambda root: _special("images/evil.png", tarfile.CHRTYPE),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archive_is_refused_before_anything_is_written(tmp_path, case):
    sandbox = tmp_path / "sandbox"
    cache = FakeHubCache(sandbox / "hf-cache")
    target = sandbox / "work" / "nih"
    good = cache.commit(_repo_files())
    fetch_dataset(_source(cache, good), target)  # a complete, good extraction is in place
    good_marker = (target / "images_001" / hub.MARKER_NAME).read_bytes()

    evil = UNSAFE[case](sandbox)
    member_name = evil.name if isinstance(evil, tarfile.TarInfo) else evil[0]
    # a harmless member first: checking must happen before extracting anything
    bad = cache.commit(_repo_files(**{"images_001.tar.gz": _tar_gz([("images/first.png", b"ok"), evil])}))

    with pytest.raises(UnsafeArchiveError) as info:
        fetch_archives(_source(cache, bad), target, indices=[1])

    assert info.value.member == member_name
    assert member_name in str(info.value) and "images_001.tar.gz" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert not list(tmp_path.rglob("*evil*"))
    assert not list(tmp_path.rglob("first.png"))
    assert _leftovers(target) == []
    assert (target / "images_001" / hub.MARKER_NAME).read_bytes() == good_marker  # old extraction kept
    _assert_nih_layout(target)


def test_duplicate_destination_is_refused(cache, tmp_path):
    archive = _tar_gz([("images/00000001_000.png", b"a"), ("00000001_000.png", b"b")])
    commit = cache.commit(_repo_files(**{"images_001.tar.gz": archive}))

    with pytest.raises(UnsafeArchiveError, match="same path"):
        fetch_archives(_source(cache, commit), tmp_path / "nih", indices=[1])
    assert not (tmp_path / "nih" / "images_001").exists()


# --------------------------------------------------------------------------------------
# Missing files, offline


def test_archive_missing_from_cache_offline_is_a_clear_error(cache, tmp_path):
    commit = cache.commit(_repo_files())
    target = tmp_path / "nih"

    with pytest.raises(HubFileNotFoundError) as info:
        fetch_dataset(_source(cache, commit, archives=(1, 2, 3)), target)

    message = str(info.value)
    assert REPO_ID in message and "images_003.tar.gz" in message and commit in message
    assert "not in the local Hugging Face cache" in message and "HF_HUB_OFFLINE is set" in message
    assert isinstance(info.value, FileNotFoundError) and info.value.offline
    assert info.value.path_in_repo == "images_003.tar.gz" and info.value.repo_id == REPO_ID
    assert isinstance(info.value.__cause__, huggingface_hub.utils.LocalEntryNotFoundError)
    # metadata came first, the archives before the missing one were extracted
    assert (target / "Data_Entry_2017_v2020.csv").is_file()
    assert (target / "images_002" / hub.MARKER_NAME).is_file()
    assert not (target / "images_003").exists()


def test_missing_data_entry_raises_file_not_found(cache, tmp_path):
    commit = cache.commit(_repo_files(**{"Data_Entry_2017_v2020.csv": None}))
    target = tmp_path / "nih"

    with pytest.raises(FileNotFoundError) as info:
        fetch_dataset(_source(cache, commit), target)

    message = str(info.value)
    assert REPO_ID in message and commit in message
    assert "Data_Entry_2017_v2020.csv" in message and "Data_Entry_2017.csv" in message
    assert "HF_HUB_OFFLINE is set" in message
    assert not list(target.glob("images_*"))  # no archive fetched before the metadata


def test_unknown_repo_or_revision_offline(cache, tmp_path):
    commit = cache.commit(_repo_files())
    with pytest.raises(FileNotFoundError, match="nobody/nothing"):
        fetch_dataset(HubSource("nobody/nothing", commit, cache_dir=str(cache.root)), tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="'v9.9'"):
        fetch_dataset(_source(cache, "v9.9"), tmp_path / "b")


def test_env_var_set_after_import_is_honoured(cache, tmp_path, monkeypatch):
    """huggingface_hub reads HF_HUB_OFFLINE at import; hub.py re-checks the environment."""
    commit = cache.commit(_repo_files())
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_head_call(*args, **kwargs):
        raise AssertionError("huggingface_hub tried to reach the Hub")

    monkeypatch.setattr(hf_file_download, "get_hf_file_metadata", no_head_call)
    assert hub.hub_offline()

    fetch_dataset(_source(cache, "main"), tmp_path / "nih")
    _assert_nih_layout(tmp_path / "nih")
    with pytest.raises(HubFileNotFoundError, match="HF_HUB_OFFLINE is set"):
        fetch_archives(_source(cache, commit), tmp_path / "nih", indices=[7])


def test_online_errors_are_classified(cache, tmp_path, monkeypatch):
    """Online (offline mode off), with hf_hub_download faked: a 404 for an optional file is
    skipped, a Hub that cannot be reached gives an error saying so."""
    commit = cache.commit(_repo_files())
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    real = hf_file_download.hf_hub_download
    calls = []

    def fake(repo_id, filename, **kwargs):
        calls.append((filename, kwargs["repo_type"], kwargs["revision"], kwargs["local_files_only"]))
        if filename == "BBox_List_2017.csv":
            raise huggingface_hub.utils.EntryNotFoundError("404 Entry Not Found")
        if filename == "images_002.tar.gz":
            raise huggingface_hub.utils.LocalEntryNotFoundError("connection refused")
        kwargs["local_files_only"] = True  # never let the real one reach the network
        return real(repo_id, filename, **kwargs)

    monkeypatch.setattr(hub, "hf_hub_download", fake)
    with pytest.raises(HubFileNotFoundError) as info:
        fetch_dataset(_source(cache, "main"), tmp_path / "nih")

    assert "could not be reached" in str(info.value) and "images_002.tar.gz" in str(info.value)
    assert not info.value.offline
    assert not (tmp_path / "nih" / "BBox_List_2017.csv").exists()
    assert calls[0] == ("Data_Entry_2017_v2020.csv", "dataset", "main", False)
    assert calls[-1] == ("images_002.tar.gz", "dataset", commit, False)  # archives pinned to the commit
    assert [c[0] for c in calls[:5]] == list(hub.DEFAULT_METADATA_FILES)  # metadata before archives


# --------------------------------------------------------------------------------------
# HubSource


def test_hub_source_defaults_and_validation():
    source = HubSource(repo_id=REPO_ID, revision="a" * 40)
    assert source.archives == tuple(range(1, 13))
    assert source.archive_name(3) == "images_003.tar.gz"
    assert source.metadata_files[:2] == ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
    assert source.cache_dir is None and source.pinned
    assert not HubSource(REPO_ID, "main").pinned
    with pytest.raises(ValueError, match="index"):
        HubSource(REPO_ID, "main", archive_pattern="images.tar.gz")
    with pytest.raises(ValueError, match="archive_pattern"):
        HubSource(REPO_ID, "main", archive_pattern="images_{idx}.tar.gz")
    with pytest.raises(ValueError, match="Data_Entry"):
        HubSource(REPO_ID, "main", metadata_files=("test_list.txt",))
    with pytest.raises(ValueError, match="same base name"):
        HubSource(REPO_ID, "main", metadata_files=("a/Data_Entry_2017.csv", "b/Data_Entry_2017.csv"))
    with pytest.raises(ValueError, match="1..999"):
        HubSource(REPO_ID, "main", archives=(0,))
    with pytest.raises(ValueError, match="revision"):
        HubSource(REPO_ID, "")


def test_library_has_no_orchestration_imports():
    tree = ast.parse(Path(hub.__file__).read_text())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {m for m in modules if m.split(".")[0] in {"prefect", "sqlalchemy", "requests", "httpx", "urllib"}}
