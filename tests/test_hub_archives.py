"""cxrmodel.data.hub: unsafe archives refused before anything is written, and clear errors for
what is missing or unreachable."""

from __future__ import annotations

import tarfile

import huggingface_hub
import huggingface_hub.constants as hf_constants
import huggingface_hub.file_download as hf_file_download
import pytest
from hub_fixtures import (  # noqa: F401 - fixtures (no_network is autouse)  # noqa: F401
    REPO_ID,
    FakeHubCache,
    _archive,
    _assert_nih_layout,
    _data_entry_csv,
    _leftovers,
    _png,
    _repo_files,
    _source,
    _tar_gz,
    cache,
    no_network,
)

from cxrmodel.data import hub
from cxrmodel.data.hub import (
    HubFileNotFoundError,
    HubSource,
    UnsafeArchiveError,
    fetch_archives,
    fetch_dataset,
)

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
