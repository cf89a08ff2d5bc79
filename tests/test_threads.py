"""Torch threads that share a host (issue 24): the setting, its default, and the one function
the entry points call, in this process and in the processes it starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from cxrmodel.threads import HostShare, available_cores, configure_threads, share_of_cores, use_torch_threads
from deployments.settings import Settings


@pytest.fixture
def restore_threads(monkeypatch):
    """Put torch's threads and the thread variables back as they were."""
    before = torch.get_num_threads()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # monkeypatch restores (or removes) it afterwards
    yield
    torch.set_num_threads(before)


def test_share_of_cores_is_an_equal_share_and_at_least_one():
    assert share_of_cores(2, cores=2) == 1
    assert share_of_cores(2, cores=16) == 8
    assert share_of_cores(3, cores=16) == 5
    assert share_of_cores(4, cores=2) == 1
    assert share_of_cores(0, cores=4) == 4
    assert 1 <= share_of_cores(1) == available_cores()


def test_setting_and_its_default(monkeypatch, tmp_path):
    monkeypatch.delenv("CXR_TORCH_THREADS", raising=False)
    monkeypatch.setenv("CXR_TORCH_SHARE_DIR", str(tmp_path / "share"))
    settings = Settings()
    assert settings.torch_threads is None and settings.torch_share_dir == tmp_path / "share"
    monkeypatch.setenv("CXR_TORCH_THREADS", "3")
    assert Settings().torch_threads == 3
    monkeypatch.setenv("CXR_TORCH_THREADS", "0")
    with pytest.raises(ValueError, match="torch_threads"):
        Settings()


def test_host_share_splits_the_cores_among_live_processes(restore_threads, tmp_path):
    """Alone a process takes every core; with another live member, its share; when that member
    dies (no clean leave), the next look removes its file and gives the cores back."""
    share = HostShare(tmp_path / "share", cores=4, every_s=3600)
    assert share.join() == 4 and torch.get_num_threads() == 4
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "share" / str(other.pid)).touch()
        assert share.rebalance() == 4  # throttled: no look before every_s
        assert share.rebalance(force=True) == 2 and torch.get_num_threads() == 2
        assert share.members() == 2
    finally:
        other.kill()
        other.wait()
    assert share.rebalance(force=True) == 4
    assert sorted(p.name for p in (tmp_path / "share").iterdir()) == [str(os.getpid())]
    share.leave()
    assert list((tmp_path / "share").iterdir()) == []


def test_configure_threads_fixed_number_or_the_share(restore_threads, tmp_path):
    from cxrmodel import threads

    assert configure_threads(1, tmp_path / "share") == 1 and threads._share is None
    assert configure_threads(None, tmp_path / "share") == share_of_cores(1)
    assert (tmp_path / "share" / str(os.getpid())).exists()
    threads._share.leave()
    threads._share = None


def test_use_torch_threads_here_and_in_child_processes(restore_threads):
    other = 2 if torch.get_num_threads() == 1 else 1
    assert use_torch_threads(other) == other
    assert torch.get_num_threads() == other
    assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == str(other)
    child = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"], capture_output=True, text=True, check=True
    )
    assert int(child.stdout) == other
    assert use_torch_threads(0) == 1 and torch.get_num_threads() == 1


def test_every_flow_takes_the_setting_where_it_resolves_its_state(restore_threads, monkeypatch, tmp_path):
    """``flows.params.resolve`` starts every flow (in ``cxr``, a worker's flow run, ``cxr serve``)."""
    from flows.params import resolve

    other = 2 if torch.get_num_threads() == 1 else 1
    monkeypatch.setenv("CXR_TORCH_THREADS", str(other))
    resolve(str(tmp_path))
    assert torch.get_num_threads() == other
