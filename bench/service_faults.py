"""The on-demand service under the faults of issue 22, measured against the real process.

A tiny champion registry (``tests/api_support.py``), ``uvicorn api.app`` on a free port of
127.0.0.1, and bounded load from a few client threads. Phases, each reported as requests
answered by status code:

1. **swap**: 8 threads score 30 images each while a new champion is registered (240 requests);
2. **tampered**: a version whose weights have one byte flipped is pinned; 60 requests, then
   ``/readyz`` and the number of "refused" log lines;
3. **outage** (PostgreSQL only, ``CXR_TEST_POSTGRES_URL``): the service reaches the database
   through a TCP link this script cuts for ``OUTAGE_S`` seconds while 4 threads score; then
   the requests answered after the link is back;
4. **decodes**: six concurrent 6,300 x 6,300 16-bit PNGs (77 KB each on the wire) with the
   default decode budget, the server's resident memory before and its peak (``VmHWM``) after.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=. python bench/service_faults.py`` (add
``CXR_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test`` for phase 3).
Research tool, not a medical device.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

OUTAGE_S = 20.0
BIG_SIDE = 6300


def _memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _tree_pids(pid: int) -> list[int]:
    """``pid`` and its children (uvicorn runs the app in the process it starts)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(p) for p in children.read_text().split()] if children.exists() else []
    return [pid, *(k for kid in kids for k in _tree_pids(kid))]


def main() -> None:
    import httpx
    from api_support import API_KEY, build_registry, phantom_png, register_network, server_env, uvicorn_args
    from conftest import BackgroundProcess, _fresh_postgres_database, free_port, wait_for_http
    from service_faults import CuttableLink, flip_one_byte, sixteen_bit_png
    from sqlalchemy.engine import make_url

    from db import registry as registry_db
    from db.engine import session_scope

    postgres = os.environ.get("CXR_TEST_POSTGRES_URL")
    work = Path(tempfile.mkdtemp(prefix="cxr-bench-faults-"))
    cleanup = _fresh_postgres_database(postgres) if postgres else None
    url = next(cleanup) if cleanup else None
    link = None
    report: dict[str, object] = {"database": "postgresql" if url else "sqlite"}
    try:
        registry = build_registry(work, url)
        served = registry.url
        if url:
            parsed = make_url(url)
            link = CuttableLink(parsed.host or "127.0.0.1", parsed.port or 5432).start()
            served = parsed.set(host="127.0.0.1", port=link.port).render_as_string(hide_password=False)
        port = free_port()
        env = server_env(registry, CXR_DATABASE_URL=served, CXR_API_CHAMPION_RETRY_S="2", CXR_API_MAX_PIXELS="50000000")
        server = BackgroundProcess(uvicorn_args(port), env, work / "server.log").start()
        base = f"http://127.0.0.1:{port}"
        headers = {"X-API-Key": API_KEY}
        images = [phantom_png(work / f"b{i}.png", seed=500 + i).read_bytes() for i in range(8)]

        def score(content: bytes, name: str = "x.png") -> httpx.Response:
            return httpx.post(
                base + "/v1/score", headers=headers, files={"image": (name, content)}, data={"age": "60"}, timeout=300
            )

        def codes(answers) -> dict[str, int]:
            return dict(sorted(collections.Counter(str(a.status_code) for a in answers).items()))

        def wait_ready(predicate, timeout=180.0) -> dict:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                body = httpx.get(base + "/readyz", timeout=30).json()
                if predicate(body):
                    return body
                time.sleep(0.2)
            raise TimeoutError("readyz never reached the expected state")

        try:
            wait_for_http(base + "/readyz", 120, server.process)
            # 1. swap under 8 threads
            answers: list[httpx.Response] = []
            with ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(lambda i=i: [answers.append(score(images[i])) for _ in range(30)]) for i in range(8)]
                while len(answers) < 40:
                    time.sleep(0.05)
                register_network(registry.url, registry.home, "net-swap", seed=3, image_size=56, threshold=0.5)
                for f in futures:
                    f.result()
            wait_ready(lambda b: b["checks"].get("champion") == "net-swap")
            report["swap"] = {"requests": len(answers), "codes": codes(answers)}

            # 2. tampered weights pinned
            register_network(registry.url, registry.home, "net-bad", seed=4, image_size=48, threshold=0.5, promote=False)
            flip_one_byte(registry.home / "models" / "net-bad" / "model.safetensors")
            with session_scope(registry.url) as s:
                registry_db.pin(s, "net-bad", "bench: tampered file")
            ready = wait_ready(lambda b: "champion_refused" in b["checks"])
            answers = [score(images[i % 8]) for i in range(60)]
            ready_after = httpx.get(base + "/readyz", timeout=30)
            report["tampered"] = {
                "requests": len(answers),
                "codes": codes(answers),
                "served_by": sorted({a.json()["model"]["name"] for a in answers if a.status_code == 200}),
                "readyz": [ready_after.status_code, ready_after.json()],
                "refused_log_lines": server.output().count("champion version"),
                "first_readyz": ready["status"],
            }

            # 3. database outage under 4 threads (PostgreSQL)
            if link is not None:
                during: list[httpx.Response] = []
                stop = threading.Event()

                def load(i: int) -> None:
                    n = 0
                    while not stop.is_set():
                        n += 1
                        during.append(score(phantom_png(work / f"o{i}-{n}.png", seed=10_000 * (i + 1) + n).read_bytes()))

                log_start = len(server.output())
                link.cut()
                with ThreadPoolExecutor(4) as pool:
                    futures = [pool.submit(load, i) for i in range(4)]
                    time.sleep(OUTAGE_S)
                    ready_down = httpx.get(base + "/readyz", timeout=30)
                    stop.set()
                    for f in futures:
                        f.result()
                link.restore()
                after = [score(images[i % 8]) for i in range(20)]
                log = server.output()[log_start:]
                report["outage"] = {
                    "seconds": OUTAGE_S,
                    "requests": len(during),
                    "codes": codes(during),
                    "json_database_unavailable": sum(
                        1
                        for a in during
                        if a.headers.get("content-type", "").startswith("application/json")
                        and a.json().get("error") == "database_unavailable"
                        and "retry-after" in a.headers
                    ),
                    "readyz_during": ready_down.status_code,
                    "log_lines_unavailable": log.count("database unavailable"),
                    "tracebacks": log.count("Traceback"),
                    "after_requests": len(after),
                    "after_codes": codes(after),
                }

            # 4. six concurrent 6,300 x 6,300 16-bit PNGs with the default budget
            big = sixteen_bit_png(BIG_SIDE)
            pids = _tree_pids(server.process.pid)
            before = {p: _memory_kib(p, "VmRSS") for p in pids}
            with ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(lambda i: score(big, f"big{i}.png"), range(6)))
            peak = {p: _memory_kib(p, "VmHWM") for p in pids}
            report["decodes"] = {
                "png_bytes": len(big),
                "requests": len(answers),
                "codes": codes(answers),
                "errors": sorted({a.json().get("error", "") for a in answers if a.status_code != 200}),
                "rss_before_mb": round(max(before.values()) / 1024, 1),
                "peak_rss_mb": round(max(peak.values()) / 1024, 1),
            }
        finally:
            server.stop()
        print(json.dumps(report, indent=2))
    finally:
        if link is not None:
            link.stop()
        if cleanup is not None:
            next(cleanup, None)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
