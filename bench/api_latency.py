"""The on-demand scoring service (``cxr api``) against a bare ``model(x)``, in one run.

A tiny champion (the demo's network and input size, 64 px, seeded random weights: speed does
not depend on the weights) serves the demo's 256 px phantom PNGs from a real uvicorn process.
Measured:

- one request at a time: p50 and p95 latency, and p50 beyond decode (the latency less the
  server's own staging + decode time, which the response reports);
- 8 concurrent clients: requests per second;
- beside them, in the same run, the bare network on the same images already decoded and
  preprocessed: p50 of one image, and images per second at batch 8.

Targets (issue 15, 2 CPU cores): throughput at least 0.7 of the bare model's at batch 8; p50
under 300 ms beyond decode. Every request is a real one: its study, run and 14 predictions are
written to SQLite.

Environment: ``CXR_BENCH_API_REQUESTS`` (default 48 per measurement), ``CXR_BENCH_API_THREADS``
(torch threads of the server and of the bare model, default 2).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from bench.common import emit  # noqa: E402

N_REQUESTS = int(os.environ.get("CXR_BENCH_API_REQUESTS", "48"))
THREADS = int(os.environ.get("CXR_BENCH_API_THREADS", "2"))
CLIENTS = 8
BATCH = 8
IMAGE_SIZE = 64  # configs/demo.yaml data.image_size
TARGET_RATIO = 0.7
TARGET_P50_MS = 300.0


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q))


def _bare(model, images, patient) -> dict[str, float]:
    import torch

    network = model.network.eval()
    with torch.no_grad():
        for _ in range(3):
            network(images[:BATCH], patient[:BATCH])
        single = []
        for i in range(len(images)):
            started = time.perf_counter()
            network(images[i : i + 1], patient[i : i + 1])
            single.append(time.perf_counter() - started)
        started = time.perf_counter()
        for start in range(0, len(images), BATCH):
            network(images[start : start + BATCH], patient[start : start + BATCH])
        batched = time.perf_counter() - started
    return {"p50_ms": 1000 * _percentile(single, 50), "throughput": len(images) / batched}


def _api(base: str, images: list[bytes], key: str) -> dict[str, float]:
    import httpx

    def post(client, content):
        started = time.perf_counter()
        answer = client.post(
            base + "/v1/score", files={"image": ("s.png", content)}, data={"age": "55", "sex": "F", "view": "PA"}
        )
        elapsed = time.perf_counter() - started
        answer.raise_for_status()
        body = answer.json()
        return elapsed, body["timings_ms"]["decode"] / 1000.0, body["batch_size"]

    headers = {"X-API-Key": key}
    with httpx.Client(headers=headers, timeout=120) as client:
        for content in images[:3]:
            post(client, content)  # warm-up
        sequential = [post(client, content) for content in images]
    clients = [httpx.Client(headers=headers, timeout=120) for _ in range(CLIENTS)]
    try:
        share = [images[i::CLIENTS] for i in range(CLIENTS)]
        started = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(lambda i: [post(clients[i], c) for c in share[i]], range(CLIENTS)))
        wall = time.perf_counter() - started
    finally:
        for client in clients:
            client.close()
    batch_sizes = [b for rows in results for _, _, b in rows]
    return {
        "p50_ms": 1000 * _percentile([e for e, _, _ in sequential], 50),
        "p95_ms": 1000 * _percentile([e for e, _, _ in sequential], 95),
        "p50_beyond_decode_ms": 1000 * _percentile([e - d for e, d, _ in sequential], 50),
        "throughput": sum(len(r) for r in results) / wall,
        "mean_batch": sum(batch_sizes) / len(batch_sizes),
    }


def main() -> None:
    import torch
    from api_support import API_KEY, build_registry, phantom_png, server_env, uvicorn_args
    from conftest import BackgroundProcess, free_port, wait_for_http

    from cxrmodel.data.imaging import read_grayscale
    from cxrmodel.models.loading import load_model_version
    from cxrmodel.serving import patient_vector, prepare_image
    from db import registry as registry_db
    from db.engine import session_scope

    torch.set_num_threads(THREADS)
    work = Path(tempfile.mkdtemp(prefix="cxr-bench-api-"))
    try:
        registry = build_registry(work, image_size=IMAGE_SIZE, n_labelled=8)
        paths = [phantom_png(work / f"q{i:03d}.png", seed=1000 + i) for i in range(2 * N_REQUESTS)]
        with session_scope(registry.url) as s:
            model = load_model_version(registry_db.model_version_files(s, registry.champion_id))
        images = torch.stack([prepare_image(read_grayscale(p), model) for p in paths[:N_REQUESTS]])
        patient = torch.stack([patient_vector(model, 55.0, "F", "PA")] * len(images))
        bare = _bare(model, images, patient)

        port = free_port()
        env = server_env(registry, OMP_NUM_THREADS=str(THREADS), CXR_API_CHAMPION_TTL_S="2", CXR_API_BATCH_SIZE=str(BATCH))
        server = BackgroundProcess(uvicorn_args(port), env, work / "server.log").start()
        try:
            wait_for_http(f"http://127.0.0.1:{port}/readyz", 120, server.process)
            # the sequential pass and the concurrent pass each get images the database has not seen
            api = _api(f"http://127.0.0.1:{port}", [p.read_bytes() for p in paths[N_REQUESTS:]], API_KEY)
        finally:
            server.stop()
        bare_after = _bare(model, images, patient)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    bare_throughput = (bare["throughput"] + bare_after["throughput"]) / 2
    ratio = api["throughput"] / bare_throughput
    print(
        f"api: p50 {api['p50_ms']:.1f} ms, p95 {api['p95_ms']:.1f} ms, p50 beyond decode {api['p50_beyond_decode_ms']:.1f} ms; "
        f"{CLIENTS} clients {api['throughput']:.1f} req/s (mean batch {api['mean_batch']:.1f}); "
        f"bare model: p50 {bare['p50_ms']:.1f} ms at batch 1, {bare_throughput:.1f} img/s at batch {BATCH}; "
        f"ratio {ratio:.2f} (target >= {TARGET_RATIO})",
        flush=True,
    )
    reference = f"{IMAGE_SIZE} px, {THREADS} torch threads, {N_REQUESTS} requests"
    emit("api p50 latency, one request", api["p50_ms"], "ms", reference)
    emit("api p95 latency, one request", api["p95_ms"], "ms", reference)
    emit(
        "api p50 latency beyond decode",
        api["p50_beyond_decode_ms"],
        "ms",
        f"< {TARGET_P50_MS:.0f} ms",
        api["p50_beyond_decode_ms"] < TARGET_P50_MS,
    )
    emit("bare model p50, batch 1", bare["p50_ms"], "ms", reference)
    emit(f"api throughput, {CLIENTS} clients", api["throughput"], "req/s", f"mean batch {api['mean_batch']:.1f}")
    emit(f"bare model throughput, batch {BATCH}", bare_throughput, "img/s", "mean of before and after the api")
    emit(f"api / bare throughput at batch {BATCH}", ratio, "", f">= {TARGET_RATIO}", ratio >= TARGET_RATIO)


if __name__ == "__main__":
    if "--no-subprocess" not in sys.argv and os.environ.get("CXR_BENCH_API_CHILD") != "1":
        # a fresh interpreter, so that pytest-free imports of tests/ helpers work the same everywhere
        env = {
            **os.environ,
            "CXR_BENCH_API_CHILD": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        raise SystemExit(subprocess.call([sys.executable, __file__], env=env))
    main()
