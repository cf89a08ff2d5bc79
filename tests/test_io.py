"""The shared file helpers: sha256 of a file, atomic writes that never leave a partial file."""

from __future__ import annotations

import hashlib

import pytest

from cxrmodel.io import atomic_copy, atomic_save_to, atomic_write, atomic_write_bytes, atomic_write_text, sha256_file


def test_sha256_file_matches_hashlib_for_any_chunk(tmp_path):
    data = bytes(range(256)) * 4099
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    for chunk in (1, 4096, 1 << 20):
        assert sha256_file(path, chunk=chunk) == hashlib.sha256(data).hexdigest()


def test_atomic_writes_create_folders_and_replace(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    atomic_write_text(target, "first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    copy = atomic_copy(target, tmp_path / "copy.txt")
    assert copy.read_bytes() == b"second"
    named = atomic_save_to(tmp_path / "named.txt", lambda name: open(name, "w").write("by name"))
    assert named.read_text() == "by name"
    assert sorted(p.name for p in tmp_path.rglob("*.tmp")) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def half_then_fail(fh):
        fh.write(b"new and partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_fail)
    with pytest.raises(RuntimeError, match="boom"):
        atomic_save_to(target, lambda name: (open(name, "wb").write(b"x"), (_ for _ in ()).throw(RuntimeError("boom"))))
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
