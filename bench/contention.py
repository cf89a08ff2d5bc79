"""Two training jobs on one host: each job's throughput beside the other, against the same job
alone, with PyTorch's default threads and with the project's default (``CXR_TORCH_THREADS``
unset: the torch processes of the host share its cores, re-balanced between steps, see
:class:`cxrmodel.threads.HostShare`).

A job is torchvision's DenseNet-121 at 48 px, batch 16, trained for a fixed number of steps
(Adam, BCE over 14 findings) on random tensors, in its own process, as a Prefect worker's
flow runs are. Goals (issue 24, 2 idle cores): each of two concurrent jobs keeps >= 0.4 of its
alone throughput with the project's default, and a job alone with the project's default loses
at most 0.1 against PyTorch's default (ratio >= 0.9).

    python bench/contention.py                  # the figures, BENCH lines for bench/run_all.py
    python bench/contention.py --steps 4 --warmup 1   # a quick sanity run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import emit  # noqa: E402

SIZE = 48
BATCH = 16


def job(threads: int | None, steps: int, warmup: int, wait_for_go: bool = False, share: str | None = None) -> float:
    """Images per second of ``steps`` training steps after ``warmup`` (in this process). With
    ``wait_for_go``, print ``ready`` after the warm-up and start timing when stdin says ``go``:
    concurrent jobs then time the same stretch, whatever their start-up took."""
    import torch
    import torchvision

    from cxrmodel.threads import configure_threads, rebalance, use_torch_threads

    if share is not None:  # the project's default: join the host's share, follow it between steps
        configure_threads(None, share)
    elif threads is not None:
        use_torch_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None, num_classes=14)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = torch.nn.BCEWithLogitsLoss()
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    y = (torch.rand(BATCH, 14) < 0.2).float()
    model.train()

    def step() -> None:
        rebalance()
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if wait_for_go:
        print("ready", flush=True)
        sys.stdin.readline()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - started)


def _command(threads: int | str | None, steps: int, warmup: int) -> list[str]:
    args = [sys.executable, str(Path(__file__).resolve()), "--job", "--steps", str(steps), "--warmup", str(warmup)]
    if isinstance(threads, str):  # a share folder: the project's default
        return args + ["--share", threads]
    return args + (["--threads", str(threads)] if threads is not None else [])


def _environment(extra: dict[str, str]) -> dict[str, str]:
    """This environment without anything that sets threads (each job decides its own), plus ``extra``."""
    drop = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CXR_TORCH_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    return {k: v for k, v in os.environ.items() if k not in drop} | {"PYTHONPATH": str(ROOT)} | extra


def run_jobs(threads: int | str | None, copies: int, steps: int, warmup: int, extra: dict[str, str] | None = None) -> list[float]:
    """Start ``copies`` jobs at once (``extra`` in their environment); their images per second."""
    procs = [
        subprocess.Popen(
            _command(threads, steps, warmup),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_environment(extra or {}),
        )
        for _ in range(copies)
    ]
    for proc in procs:  # every job warmed up, then all start timing together
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"job exited with {proc.wait()} before its warm-up ended")
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    rates = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"job exited with {proc.returncode}")
        rates.append(json.loads(out.strip().splitlines()[-1])["images_per_second"])
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per job")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--passive", action="store_true", help="also measure every core with OMP_WAIT_POLICY=PASSIVE")
    parser.add_argument("--job", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--share", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        print(
            json.dumps({"images_per_second": job(args.threads, args.steps, args.warmup, wait_for_go=True, share=args.share)}),
            flush=True,
        )
        return 0

    import tempfile

    from cxrmodel.threads import available_cores

    ours = tempfile.mkdtemp(prefix="cxr-contention-share-")  # this run's jobs share the cores among themselves
    cores = available_cores()
    print(f"{cores} cores; PyTorch's default: one thread per core; the project's default: the host's share", flush=True)
    alone, together = {}, {}
    configurations = [("PyTorch default", None, {}), ("CXR default", ours, {})]
    if args.passive:  # an alternative, for information: every core, OpenMP threads that sleep instead of spinning
        configurations.append(("all cores, passive", cores, {"OMP_WAIT_POLICY": "PASSIVE"}))
    for label, threads, extra in configurations:
        alone[label] = run_jobs(threads, 1, args.steps, args.warmup, extra)[0]
        together[label] = run_jobs(threads, 2, args.steps, args.warmup, extra)
        kept = [rate / alone[label] for rate in together[label]]
        print(
            f"{label:16s} alone {alone[label]:6.1f} img/s; two at once "
            + ", ".join(f"{rate:6.1f} img/s ({k:.2f} of alone)" for rate, k in zip(together[label], kept, strict=True)),
            flush=True,
        )
        emit(
            f"two concurrent jobs, {label}: worst share of alone",
            round(min(kept), 3),
            "ratio",
            f"DenseNet-121 {SIZE} px batch {BATCH}, {args.steps} steps, {cores} cores"
            + (" (target >= 0.4)" if label == "CXR default" else ""),
            ok=min(kept) >= 0.4 if label == "CXR default" else None,
        )
    alone_ratio = alone["CXR default"] / alone["PyTorch default"]
    emit(
        "one job alone, CXR default / PyTorch default",
        round(alone_ratio, 3),
        "ratio",
        f"{alone['CXR default']:.1f} vs {alone['PyTorch default']:.1f} img/s (target >= 0.9)",
        ok=alone_ratio >= 0.9,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
