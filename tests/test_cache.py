"""The resized uint8 image cache: hits, invalidation, atomic files, failure reporting."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

import cxrmodel.data.cache as cache_module
from cxrmodel.data.cache import ImageCache
from cxrmodel.data.imaging import read_grayscale, resize_square


@pytest.fixture
def source(fixtures_dir, tmp_path):
    path = tmp_path / "src" / "00000001_000.png"
    path.parent.mkdir()
    shutil.copy(fixtures_dir / "nih-sample" / "images" / "00000001_000.png", path)
    return path


@pytest.fixture
def decode_calls(monkeypatch):
    calls: list[str] = []

    def counting(path):
        calls.append(str(path))
        return read_grayscale(path)

    monkeypatch.setattr(cache_module, "read_grayscale", counting)
    return calls


def test_get_decodes_once_then_hits(tmp_path, source, decode_calls):
    cache = ImageCache(tmp_path / "cache", 64)
    first = cache.get(source.name, source)
    assert first.shape == (64, 64) and first.dtype == np.uint8
    assert np.array_equal(first, resize_square(read_grayscale(source), 64))
    second = cache.get(source.name, source)
    assert np.array_equal(first, second)
    assert len(decode_calls) == 1
    array_path, meta_path = cache.paths(source.name)
    assert array_path.parent.parent == tmp_path / "cache" / "64px"
    assert array_path.name == "00000001_000.npy" and len(array_path.parent.name) == 2
    assert array_path.is_file() and meta_path.is_file()
    assert not [p for p in array_path.parent.iterdir() if p.name.endswith(".tmp")]
    # a new cache object over the same folder still hits
    ImageCache(tmp_path / "cache", 64).get(source.name, source)
    assert len(decode_calls) == 1
    # another size is another entry
    assert ImageCache(tmp_path / "cache", 32).get(source.name, source).shape == (32, 32)
    assert len(decode_calls) == 2


def test_touched_or_changed_source_invalidates(tmp_path, source, decode_calls):
    cache = ImageCache(tmp_path / "cache", 64)
    original = cache.get(source.name, source)
    st = source.stat()
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert not cache.is_fresh(source.name, source)
    cache.get(source.name, source)
    assert len(decode_calls) == 2

    Image.fromarray(np.full((128, 128), 200, dtype=np.uint8)).save(source)
    changed = cache.get(source.name, source)
    assert len(decode_calls) == 3
    assert np.all(changed == 200) and not np.array_equal(changed, original)
    cache.get(source.name, source)
    assert len(decode_calls) == 3


def test_corrupt_cache_entry_is_rebuilt(tmp_path, source, decode_calls):
    cache = ImageCache(tmp_path / "cache", 64)
    good = cache.get(source.name, source)
    array_path, _ = cache.paths(source.name)
    array_path.write_bytes(b"not numpy")
    assert np.array_equal(cache.get(source.name, source), good)
    assert len(decode_calls) == 2


def test_keys_must_be_plain_file_names(tmp_path, source):
    cache = ImageCache(tmp_path / "cache", 64)
    for bad in ("../x.png", "a/b.png", "", ".."):
        with pytest.raises(ValueError, match="plain file name"):
            cache.get(bad, source)


@pytest.mark.parametrize("workers", [0, 2])
def test_build_reports_failures(tmp_path, source, workers):
    empty = tmp_path / "src" / "empty.png"
    empty.write_bytes(b"")
    cut = tmp_path / "src" / "cut.png"
    data = source.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    cache = ImageCache(tmp_path / "cache", 48)
    failures = cache.build(
        [
            (source.name, source),
            ("empty.png", empty),
            ("cut.png", cut),
            ("gone.png", tmp_path / "src" / "gone.png"),
            ("../evil.png", source),
        ],
        workers=workers,
    )
    assert set(failures) == {"empty.png", "cut.png", "gone.png", "../evil.png"}
    assert failures["empty.png"].startswith("empty file")
    assert failures["cut.png"].startswith("corrupt or truncated image")
    assert failures["gone.png"].startswith("missing file")
    assert "plain file name" in failures["../evil.png"]
    assert cache.is_fresh(source.name, source)
    assert cache.get(source.name, source).shape == (48, 48)
    assert cache.build([(source.name, source)], workers=workers) == {}


def test_content_hash_decides_freshness_when_given(tmp_path, source, decode_calls):
    """With the content hash the refresh stored, touching the file keeps the entry (no file is
    hashed again); another hash, i.e. other content, replaces it; and a hash-less reader
    still goes by size and mtime."""
    from cxrmodel.io import sha256_file

    cache = ImageCache(tmp_path / "cache", 64)
    digest = sha256_file(source)
    first = cache.get(source.name, source, digest)
    st = source.stat()
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert cache.is_fresh(source.name, source, digest)
    assert np.array_equal(cache.get(source.name, source, digest), first)
    assert len(decode_calls) == 1
    assert not cache.is_fresh(source.name, source)  # touched: stale for a reader without the hash

    Image.fromarray(np.full((128, 128), 200, dtype=np.uint8)).save(source)
    new_digest = sha256_file(source)
    assert not cache.is_fresh(source.name, source, new_digest)
    assert np.all(cache.get(source.name, source, new_digest) == 200)
    assert len(decode_calls) == 2
    assert cache.build([(source.name, source, new_digest)]) == {} and len(decode_calls) == 2


def test_cached_entry_needs_no_source_with_its_hash(tmp_path, source):
    from cxrmodel.io import sha256_file

    cache = ImageCache(tmp_path / "cache", 32)
    digest = sha256_file(source)
    image = cache.get(source.name, source, digest)
    source.unlink()
    assert np.array_equal(cache.get(source.name, source, digest), image)
    with pytest.raises(cache_module.ImageDecodeError, match="missing file"):
        cache.get(source.name, source)
