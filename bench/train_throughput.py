"""Training throughput of the full seed-004 model through ``cxrmodel.training.loop.fit`` (DataLoader over
cached uint8 images, the seed's augmentations, weighted BCE, Adam) against a bare loop over the
same model, batch size and image size on tensors already in memory. Ratio target: >= 0.9.

Runs on the CPU here; with CUDA available it also runs on the GPU.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import emit  # noqa: E402

SIZE = 64
BATCH = 32
N = 320


def measure(device_name: str) -> None:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from cxrmodel.config import TrainConfig
    from cxrmodel.data.datasets import StudyDataset
    from cxrmodel.data.transforms import eval_transform, train_transform
    from cxrmodel.models.networks import build_model
    from cxrmodel.training.loop import fit, positive_weights

    device = torch.device(device_name)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N, SIZE, SIZE), dtype=np.uint8)
    patient = rng.random((N, 3), dtype=np.float32)
    labels = (rng.random((N, 14)) < 0.15).astype(np.float32)
    weights = positive_weights(labels, max_weight=10.0)

    torch.manual_seed(0)
    model = build_model("densenet121_fpn").to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = torch.nn.BCEWithLogitsLoss(pos_weight=weights.to(device))
    x = torch.randn(N, 3, SIZE, SIZE, device=device)
    p = torch.as_tensor(patient, device=device)
    y = torch.as_tensor(labels, device=device)
    model.train()

    def bare_epoch() -> float:
        t0 = time.perf_counter()
        for start in range(0, N, BATCH):
            loss = criterion(model(x[start : start + BATCH], p[start : start + BATCH]), y[start : start + BATCH])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return N / (time.perf_counter() - t0)

    bare_epoch()  # warm-up
    bare = max(bare_epoch() for _ in range(2))

    dataset = StudyDataset(images.__getitem__, patient, labels, transform=train_transform(SIZE))
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, pin_memory=device.type == "cuda")
    val = DataLoader(
        StudyDataset(images[:BATCH].__getitem__, patient[:BATCH], labels[:BATCH], transform=eval_transform(SIZE)),
        batch_size=BATCH,
    )
    result = fit(build_model("densenet121_fpn"), loader, val, TrainConfig(epochs=3, batch_size=BATCH), weights, device)
    ours = max(r.images_per_second for r in result.history[1:])
    emit(f"training: bare loop, full model, {SIZE}px, batch {BATCH}, {device_name}", round(bare, 1), "img/s", "reference")
    emit(
        f"training: cxrmodel.training.loop.fit from the image cache, {device_name}",
        round(ours, 1),
        "img/s",
        f"ratio {ours / bare:.2f} of bare (target >= 0.9)",
        ours / bare >= 0.9,
    )


def main() -> None:
    import torch

    measure("cpu")
    if torch.cuda.is_available():
        measure("cuda")
    else:
        emit("training: GPU", None, "", "not measured: no GPU on this machine")


if __name__ == "__main__":
    main()
