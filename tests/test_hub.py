"""cxrmodel.data.hub: fetching NIH ChestX-ray14 from a pre-populated Hugging Face cache, offline;
re-runs and changed archives."""

from __future__ import annotations

import ast
import hashlib
import json
import tarfile
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
from hub_fixtures import (  # noqa: F401 - fixtures (no_network is autouse)  # noqa: F401
    KEYS_001,
    KEYS_002,
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
    HubSource,
    fetch_archives,
    fetch_dataset,
    fetch_metadata,
)
from cxrmodel.data.metadata import read_nih_metadata

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
