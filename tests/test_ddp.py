"""Data-parallel training (DDP, gloo on CPU) with 2 real processes launched by torchrun.

This file is also the worker script torchrun starts (see ``__main__`` at the bottom): the
parent test launches ``torchrun --nproc-per-node 2 tests/test_ddp.py <mode> ...``, the two
ranks write what they saw under a temporary folder, and the parent compares.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
N_TRAIN, N_VAL, SIZE = 16, 7, 32  # 7 validation rows: a DistributedSampler pads them to 8


# --------------------------------------------------------------------------------------
# launching


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*worker_args: str, timeout: float = 240) -> str:
    """Run this file under ``torchrun --nproc-per-node 2`` (gloo, 127.0.0.1, a free port);
    return the combined output, failing the test on a non-zero exit or a time-out."""
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "0",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port),
        str(Path(__file__).resolve()),
        *worker_args,
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and the two workers it started
        output, _ = proc.communicate()
        pytest.fail(f"torchrun timed out after {timeout} s:\n{output[-6000:]}")
    assert proc.returncode == 0, f"torchrun exited with {proc.returncode}:\n{output[-6000:]}"
    return output


# --------------------------------------------------------------------------------------
# fixed random data


def _to_rgb(image: torch.Tensor) -> torch.Tensor:
    return (image.float() / 255.0).expand(3, -1, -1)


def _split(n: int, seed: int):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, SIZE, SIZE), dtype=np.uint8)
    patient = rng.random((n, 3)).astype(np.float32)
    labels = (rng.random((n, 14)) < 0.4).astype(np.float32)
    labels[0], labels[1] = 1, 0  # both values in every class: AUROC defined
    return images, patient, labels


class RecordingDataset(torch.utils.data.Dataset):
    """Remembers which indices were read (num_workers=0: in this process)."""

    def __init__(self, inner) -> None:
        self.inner, self.seen = inner, []

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i):
        self.seen.append(int(i))
        return self.inner[i]


# --------------------------------------------------------------------------------------
# workers (run by torchrun)


def _toy_worker(out_dir: str) -> None:
    """A few DDP steps of the real network at 32 px through ``fit``, then a sharded
    evaluation merged with ``all_gather_predictions``."""
    from torch.utils.data import DataLoader, DistributedSampler

    from cxrmodel.config import TrainConfig
    from cxrmodel.data.datasets import StudyDataset
    from cxrmodel.models.networks import build_model
    from cxrmodel.training.distributed import all_gather_predictions, cleanup, distributed_loader, init_from_env, wrap_ddp
    from cxrmodel.training.loop import fit, positive_weights, predict_loader, seed_everything

    torch.set_num_threads(1)
    ctx = init_from_env()
    assert (ctx.world_size, ctx.backend, ctx.device.type) == (2, "gloo", "cpu")
    seed_everything(1000 + ctx.rank)  # a different initialisation on each rank: DDP must copy rank 0's
    model = build_model("densenet121_fpn")
    ddp = wrap_ddp(model, ctx)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}

    ti, tp, tl = _split(N_TRAIN, 1)
    vi, vp, vl = _split(N_VAL, 2)
    train_ds = RecordingDataset(StudyDataset(ti.__getitem__, tp, tl, transform=_to_rgb))
    val_ds = StudyDataset(vi.__getitem__, vp, vl, transform=_to_rgb)
    train_loader = distributed_loader(train_ds, 4, ctx, shuffle=True, seed=0)
    val_loader = DataLoader(val_ds, batch_size=8)
    seen_per_epoch: list[list[int]] = []

    def on_epoch(_result) -> None:
        seen_per_epoch.append(list(train_ds.seen))
        train_ds.seen.clear()

    config = TrainConfig(epochs=2, batch_size=4, learning_rate=1e-2, device="cpu", augmentation="none")
    result = fit(ddp, train_loader, val_loader, config, positive_weights(tl), ctx.device, on_epoch=on_epoch)

    shard = DataLoader(val_ds, batch_size=3, sampler=DistributedSampler(val_ds, num_replicas=2, rank=ctx.rank, shuffle=False))
    probs, labels, indices = [], [], []
    model.eval()
    with torch.no_grad():
        for image, patient, y, i in shard:
            probs.append(torch.sigmoid(model(image, patient)))
            labels.append(y)
            indices.append(i)
    gathered = all_gather_predictions(torch.cat(probs).numpy(), torch.cat(labels).numpy(), torch.cat(indices).numpy())
    full_probs, full_labels, _ = predict_loader(model, val_loader, ctx.device)
    torch.save(
        {
            "initial": initial,
            "final": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "best_state": result.best_state,
            "seen": seen_per_epoch,
            "history": [h.as_dict() for h in result.history],
            "gathered": gathered,
            "full": (full_probs, full_labels),
        },
        Path(out_dir) / f"rank{ctx.rank}.pt",
    )
    cleanup()


def _forbid_database_and_models(home: Path) -> None:
    """On a non-zero rank: any database connection or any file operation under
    ``home/models`` raises (and so fails the run)."""
    models = os.path.abspath(home / "models")
    rank = os.environ.get("RANK")
    path_events = {"open", "os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.chmod", "os.truncate"}

    def hook(event: str, args: tuple) -> None:
        if event in ("sqlite3.connect", "sqlite3.connect/handle"):
            raise PermissionError(f"rank {rank} opened a database: {args[:1]}")
        if event in path_events and args and isinstance(args[0], (str, os.PathLike)):
            path = os.path.abspath(os.fspath(args[0]))
            if path == models or path.startswith(models + os.sep):
                raise PermissionError(f"rank {rank} touched {path} ({event})")

    sys.addaudithook(hook)


def _flow_worker(home: str, *flow_args: str) -> None:
    if os.environ.get("RANK") != "0":
        _forbid_database_and_models(Path(home))
    import torch

    torch.set_num_threads(1)
    from flows.train_ddp import main

    version_id = main(["--home", home, *flow_args])
    assert (version_id is not None) == (os.environ["RANK"] == "0")


# --------------------------------------------------------------------------------------
# tests


def test_distributed_context_without_torchrun(monkeypatch):
    from cxrmodel.training.distributed import DistContext, barrier, cleanup, init_from_env, wrap_ddp

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_from_env(device="cpu")
    assert ctx == DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    assert ctx.is_main and not ctx.distributed and ctx.describe() == "cpu"
    module = torch.nn.Linear(2, 2)
    assert wrap_ddp(module, ctx) is module  # nothing to wrap without a process group
    barrier(ctx)
    cleanup()


def test_all_gather_predictions_single_process_drops_padding_and_sorts():
    from cxrmodel.training.distributed import all_gather_predictions

    probs = np.array([[0.3], [0.1], [0.2], [0.3]])
    labels = np.array([[1], [0], [1], [1]])
    p, t, i = all_gather_predictions(probs, labels, [2, 0, 1, 2])  # index 2 twice: sampler padding
    assert i.tolist() == [0, 1, 2]
    assert p[:, 0].tolist() == [0.1, 0.2, 0.3] and t[:, 0].tolist() == [0, 1, 1]


def test_ddp_two_gloo_ranks_stay_identical_and_split_each_epoch(tmp_path):
    from torch.utils.data import DistributedSampler

    _torchrun("toy", str(tmp_path))
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)

    # DDP copied rank 0's initialisation although each rank drew its own.
    assert all(torch.equal(r0["initial"][k], r1["initial"][k]) for k in r0["initial"])
    # Bitwise-identical parameters and buffers after training (and the same best state) ...
    assert r0["final"].keys() == r1["final"].keys()
    for k in r0["final"]:
        assert torch.equal(r0["final"][k], r1["final"][k]), k
        assert torch.equal(r0["best_state"][k], r1["best_state"][k]), k
    # ... which moved away from the initial ones.
    changed = [k for k, v in r0["final"].items() if v.is_floating_point() and not torch.equal(v, r0["initial"][k])]
    n_params = sum(1 for v in r0["final"].values() if v.is_floating_point())
    assert len(changed) > 0.9 * n_params

    # Every epoch the two ranks read disjoint halves of the training set, reshuffled each epoch.
    assert len(r0["seen"]) == len(r1["seen"]) == 2
    for epoch, (a, b) in enumerate(zip(r0["seen"], r1["seen"], strict=True), start=1):
        assert len(a) == len(b) == N_TRAIN // 2
        assert not set(a) & set(b) and set(a) | set(b) == set(range(N_TRAIN))
        for rank, seen in ((0, a), (1, b)):
            sampler = DistributedSampler(list(range(N_TRAIN)), num_replicas=2, rank=rank, shuffle=True, seed=0)
            sampler.set_epoch(epoch)  # fit() called set_epoch(epoch)
            assert seen == list(sampler)
    assert r0["seen"][0] != r0["seen"][1]

    # Both ranks report the same epochs: global train loss, rank 0's validation numbers.
    for h0, h1 in zip(r0["history"], r1["history"], strict=True):
        for key in ("epoch", "train_loss", "val_loss", "macro_f1", "mean_auroc", "mean_precision", "learning_rate"):
            assert h0[key] == h1[key], key

    # A sharded evaluation, merged, equals the whole-set evaluation (padding dropped, order kept).
    for r in (r0, r1):
        probs, labels, indices = r["gathered"]
        assert indices.tolist() == list(range(N_VAL))
        np.testing.assert_allclose(probs, r0["full"][0], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(labels, r0["full"][1])


@pytest.mark.slow
def test_train_ddp_entry_point_only_rank0_writes(tmp_path):
    import yaml
    from sqlalchemy import func, select

    from cxrmodel.config import DataConfig, SynthConfig
    from cxrmodel.data.synth import generate_dataset
    from cxrmodel.io import sha256_file
    from db.engine import session_scope, upgrade_database
    from db.models import EpochMetric, ModelVersion, TrainingRun
    from tasks import data as data_tasks

    root, home = tmp_path / "synthetic", tmp_path / "home"
    url = f"sqlite:///{tmp_path / 'cxr.db'}"
    data = DataConfig(image_size=32, balancing="none")
    generate_dataset(root, SynthConfig(n_studies=60, n_incoming=0, image_size=64), workers=1)
    upgrade_database(url)
    refresh = data_tasks.start_refresh.fn(url, "synthetic", str(root), None)
    counts = [data_tasks.ingest_labelled.fn(url, root, "synthetic", data, refresh)]
    counts.append(data_tasks.build_cache.fn(url, home / "cache", data.image_size, refresh, "synthetic"))
    data_tasks.finish_refresh.fn(url, refresh, counts)

    config = tmp_path / "ddp.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": data.model_dump(mode="json"),
                "train": {"epochs": 1, "batch_size": 16, "pos_weight_max": 10.0, "device": "cpu"},
            }
        )
    )
    output = _torchrun("flow", str(home), "--database-url", url, "--config", str(config))

    with session_scope(url) as s:
        version = s.scalars(select(ModelVersion)).one()
        run = s.scalars(select(TrainingRun)).one()
        assert run.status == "completed" and run.model_version_id == version.id
        assert run.device == "cpu x2 ddp/gloo"
        assert s.scalar(select(func.count()).select_from(EpochMetric)) == 1
        assert [e.epoch for e in run.epochs] == [1]
        assert version.status == "candidate" and version.kind == "densenet121_fpn"
        assert version.config["distributed"]["world_size"] == 2
        assert version.config["distributed"]["global_batch_size"] == 32
        artifact, sha = Path(version.artifact_path), version.sha256
    assert f"model_version_id={version.id}" in output

    folders = list((home / "models").iterdir())
    assert folders == [artifact.parent]
    for name in ("model.safetensors", "optimizer.pt", "checkpoint.pt", "config.json", "validation_metrics.csv", "train.log"):
        assert (artifact.parent / name).is_file(), name
    assert sha256_file(artifact) == sha
    assert "epoch 1/1" in (artifact.parent / "train.log").read_text()


if __name__ == "__main__":  # a torchrun worker: tests/test_ddp.py toy OUT | flow HOME FLOW_ARGS...
    mode, *rest = sys.argv[1:]
    {"toy": _toy_worker, "flow": _flow_worker}[mode](*rest)
