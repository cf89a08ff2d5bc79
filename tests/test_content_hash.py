"""``studies.content_hash`` has one meaning, labelled or incoming: the sha256 of the image file.
A refresh hashes each file once; the image cache is keyed by that hash and never hashes again."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

import cxrmodel.data.incoming as incoming_module
import cxrmodel.io as io_module
from cxrmodel.config import DataConfig, SynthConfig
from cxrmodel.data.synth import generate_dataset
from cxrmodel.io import sha256_file
from db.engine import session_scope
from db.models import Study
from tasks import data as data_tasks

DATA = DataConfig(image_size=32, balancing="none")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hashed")
    generate_dataset(root, SynthConfig(n_studies=16, n_incoming=4, image_size=48, seed=2), workers=1)
    return root


@pytest.fixture
def hashed(monkeypatch) -> Counter:
    """How often each file is hashed (through :func:`cxrmodel.io.sha256_file`, wherever imported)."""
    seen: Counter = Counter()

    def counting(path, chunk=io_module.CHUNK):
        seen[Path(path).name] += 1
        return sha256_file(path, chunk)

    monkeypatch.setattr(io_module, "sha256_file", counting)
    monkeypatch.setattr(incoming_module, "sha256_file", counting)
    return seen


def _refresh(url: str, root: Path, home: Path) -> None:
    run = data_tasks.start_refresh.fn(url, "synthetic", str(root), None)
    counts = [
        data_tasks.ingest_labelled.fn(url, root, "synthetic", DATA, run),
        data_tasks.build_cache.fn(url, home / "cache", DATA.image_size, run, "synthetic"),
        data_tasks.register_incoming.fn(url, root / "incoming", run),
    ]
    data_tasks.finish_refresh.fn(url, run, counts)


def test_content_hash_is_the_files_sha256_computed_once_per_refresh(migrated_url, dataset, tmp_path, hashed):
    _refresh(migrated_url, dataset, tmp_path / "home")
    with session_scope(migrated_url) as s:
        rows = s.execute(select(Study.study_key, Study.image_path, Study.content_hash, Study.labelled)).all()
    assert {labelled for *_, labelled in rows} == {True, False}
    for key, path, content_hash, _ in rows:
        assert content_hash == sha256_file(path), key
    assert set(hashed.values()) == {1} and set(hashed) == {Path(path).name for _, path, _, _ in rows}

    hashed.clear()  # a second refresh: each file hashed once more, the cache reused without decoding or hashing
    cache_entries = sorted((tmp_path / "home" / "cache").rglob("*.npy"))
    stamps = [p.stat().st_mtime_ns for p in cache_entries]
    _refresh(migrated_url, dataset, tmp_path / "home")
    assert set(hashed.values()) == {1}
    assert [p.stat().st_mtime_ns for p in cache_entries] == stamps


def test_a_touched_but_unchanged_image_keeps_its_study_and_cache_entry(migrated_url, dataset, tmp_path):
    import os

    _refresh(migrated_url, dataset, tmp_path / "home")
    image = sorted((dataset / "images").glob("*.png"))[0]
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 7_000_000_000))
    run = data_tasks.start_refresh.fn(migrated_url, "synthetic", str(dataset), None)
    totals = data_tasks.ingest_labelled.fn(migrated_url, dataset, "synthetic", DATA, run)
    assert totals.updated == 0  # the same bytes: the same study (size:mtime would have said "changed")
