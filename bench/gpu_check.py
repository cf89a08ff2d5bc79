"""The GPU check behind ``bench/gpu_check.sh``: seed 004's network at 224 px, on one accelerator.

1. Training: ``cxrmodel.training.loop.fit`` (the project's loop: DataLoader over cached uint8
   images, the seed's augmentations, weighted BCE, Adam, mixed precision and channels-last as
   the loop picks them on CUDA) for a fixed number of steps, against a bare loop (the same
   network, autocast dtype, memory format, optimiser and batch size) over the same batches
   already on the device. Figure: images/s of each and the ratio.
2. Scoring: the nightly path from image files (``ScoringDataset -> score_batches``) over
   ``--studies`` PNG studies, against a bare forward over the same batches already decoded and
   on the device. Figure: images/s of each and the ratio.

``--dry-run`` runs the same code on the CPU at tiny sizes (a test runs it: the script cannot
rot while no GPU is at hand). Prints BENCH lines for ``bench/run_all.py`` and a summary.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import emit  # noqa: E402

SEED004 = Path(__file__).resolve().parent.parent / "configs" / "seed004.yaml"


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def check_training(device, size: int, batch: int, steps: int, workers: int) -> tuple[float, float]:
    """(images/s of ``fit``, images/s of the bare loop) over ``steps`` batches of ``batch``."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from cxrmodel.config import load_pipeline_config
    from cxrmodel.data.datasets import StudyDataset
    from cxrmodel.data.transforms import eval_transform, train_transform
    from cxrmodel.models.networks import build_model
    from cxrmodel.training.loop import Acceleration, fit, positive_weights

    recipe = load_pipeline_config(SEED004).train
    config = recipe.model_copy(update={"epochs": 2, "batch_size": batch, "num_workers": workers, "weights": "scratch"})
    n = steps * batch
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    patient = rng.random((n, 3), dtype=np.float32)
    labels = (rng.random((n, 14)) < 0.15).astype(np.float32)
    weights = positive_weights(labels, max_weight=10.0)

    # Bare: the same network, precision, memory format and optimiser on tensors already there.
    accel = Acceleration.for_device(config, device)
    torch.manual_seed(0)
    model = build_model(config.architecture, backbone=config.backbone, dropout=config.dropout).to(
        device, memory_format=accel.memory_format
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    scaler = torch.amp.GradScaler(device.type, enabled=accel.scale_loss)
    criterion = torch.nn.BCEWithLogitsLoss(pos_weight=weights.to(device))
    x = (torch.as_tensor(images[:, None]).float().div(255).expand(-1, 3, -1, -1)).contiguous()
    x = x.to(device).contiguous(memory_format=accel.memory_format)
    p, y = torch.as_tensor(patient, device=device), torch.as_tensor(labels, device=device)
    model.train()

    def bare_pass() -> float:
        _sync(device)
        started = time.perf_counter()
        for start in range(0, n, batch):
            with accel.autocast(device):
                loss = criterion(model(x[start : start + batch], p[start : start + batch]).float(), y[start : start + batch])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        _sync(device)
        return n / (time.perf_counter() - started)

    bare_pass()  # warm-up (cuDNN autotuning, allocator)
    bare = bare_pass()
    model = optimizer = x = None  # free the device memory before fit's run
    if device.type == "cuda":
        torch.cuda.empty_cache()

    torch.manual_seed(0)
    network = build_model(config.architecture, backbone=config.backbone, dropout=config.dropout)
    pin = device.type == "cuda"
    train = DataLoader(
        StudyDataset(images.__getitem__, patient, labels, transform=train_transform(size)),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
    )
    val = DataLoader(
        StudyDataset(images[:batch].__getitem__, patient[:batch], labels[:batch], transform=eval_transform(size)),
        batch_size=batch,
    )
    result = fit(network, train, val, config, weights, device)
    ours = result.history[-1].images_per_second  # the second epoch: warmed up like the bare loop
    return ours, bare


def _write_studies(folder: Path, n: int, side: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(side, side), dtype=np.uint8)
    paths = []
    for i in range(n):
        noisy = np.clip(base.astype(np.int16) + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:08d}_000.png"
        Image.fromarray(noisy).save(path, compress_level=1)
        paths.append(path)
    return paths


def check_scoring(device, size: int, batch: int, studies: int, source_side: int, workers: int) -> tuple[float, float]:
    """(images/s of the scoring path from files, images/s of the bare forward) over ``studies``."""
    import torch

    from cxrmodel.config import load_pipeline_config
    from cxrmodel.data.transforms import eval_transform
    from cxrmodel.inference import ScoringDataset, ScoringItem, score_batches
    from cxrmodel.models.networks import build_model

    recipe = load_pipeline_config(SEED004).train
    work = Path(tempfile.mkdtemp(prefix="cxr-gpu-check-"))
    try:
        paths = _write_studies(work, studies, source_side)
        items = [ScoringItem(i, str(path), (0.5, 0.0, 0.0)) for i, path in enumerate(paths)]
        torch.manual_seed(0)
        model = build_model(recipe.architecture, backbone=recipe.backbone, dropout=recipe.dropout).eval().to(device)
        transform = eval_transform(size)
        dataset = ScoringDataset(items, size, transform)
        tensors = torch.stack([dataset[i][0] for i in range(len(items))]).to(device)
        patient = torch.tensor([[0.5, 0.0, 0.0]] * len(items), device=device)

        def bare() -> float:
            with torch.no_grad():
                model(tensors[:batch], patient[:batch])
                _sync(device)
                started = time.perf_counter()
                for start in range(0, len(items), batch):
                    torch.sigmoid(model(tensors[start : start + batch], patient[start : start + batch]).float()).cpu()
                _sync(device)
                return len(items) / (time.perf_counter() - started)

        def path() -> float:
            started = time.perf_counter()
            done = 0
            for scored in score_batches(model, ScoringDataset(items, size, transform), batch, device, num_workers=workers):
                done += len(scored.study_ids)
            if done != len(items):
                raise RuntimeError(f"scored {done} of {len(items)} studies")
            return len(items) / (time.perf_counter() - started)

        reference = [bare()]
        ours = path()
        reference.append(bare())
        return ours, sum(reference) / len(reference)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description="Seed 004's network on one accelerator: training and scoring ratios.")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (a test runs this)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per epoch (two epochs, the second timed)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: seed 004's)")
    parser.add_argument("--studies", type=int, default=1000, help="studies scored")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader worker processes")
    args = parser.parse_args()

    import torch

    from cxrmodel.config import load_pipeline_config

    if args.dry_run:
        device, size, batch, steps, studies, side, workers = torch.device("cpu"), 32, 4, 2, 8, 64, 0
    else:
        if not torch.cuda.is_available():
            emit("GPU check", None, "", "not measured on a GPU: no CUDA device (use --dry-run on a CPU)")
            print("no CUDA device: not measured on a GPU", file=sys.stderr)
            return 1
        device, size = torch.device("cuda"), 224
        batch = args.batch or load_pipeline_config(SEED004).train.batch_size
        steps, studies, side, workers = args.steps, args.studies, 1024, args.workers
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    print(f"{where}: seed 004's network at {size} px, batch {batch}, {steps} steps, {studies} studies", flush=True)

    started = time.perf_counter()
    fit_rate, bare_rate = check_training(device, size, batch, steps, workers)
    emit(f"GPU check training: bare loop, {size}px, batch {batch}, {where}", round(bare_rate, 1), "img/s", "reference")
    emit(
        f"GPU check training: cxrmodel fit, mixed precision + channels-last, {where}",
        round(fit_rate, 1),
        "img/s",
        f"ratio {fit_rate / bare_rate:.2f} of bare",
    )
    score_rate, forward_rate = check_scoring(device, size, batch, studies, side, workers)
    emit(f"GPU check scoring: bare forward, {studies} studies, {where}", round(forward_rate, 1), "img/s", "reference")
    emit(
        f"GPU check scoring: from {side}px PNG files (score_batches), {where}",
        round(score_rate, 1),
        "img/s",
        f"ratio {score_rate / forward_rate:.2f} of bare forward",
    )
    print(
        f"training {fit_rate:.1f} img/s vs bare {bare_rate:.1f} (ratio {fit_rate / bare_rate:.2f}); "
        f"scoring {score_rate:.1f} img/s vs bare forward {forward_rate:.1f} (ratio {score_rate / forward_rate:.2f}); "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
