"""The fixed cost of a ``cxr`` command (issue 14): wall seconds of real ``cxr`` processes whose
own work is tiny, so what is measured is imports, Prefect and process exit.

- ``cxr models list`` on an empty, migrated home: a read-only command (no Prefect, no torch);
- ``import flows.refresh`` (what ``cxr refresh``/``cxr synth`` load) beside ``import flows.stages``
  (what a model command loads);
- ``cxr synth`` of 10 studies (a flow command) against a running ``prefect server start``
  (``PREFECT_API_URL``), and with a temporary server, each with the fast exit and with
  ``CXR_FAST_EXIT=0``.

Each figure is the fastest of ``CXR_BENCH_REPEATS`` (default 2) runs. The issue's reference:
38 s for ``cxr calibrate`` (an 8.5 s flow), a temporary server every time.

    python bench/command_overhead.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from bench.common import emit  # noqa: E402

REPEATS = int(os.environ.get("CXR_BENCH_REPEATS", "2"))
CXR = [sys.executable, "-m", "flows.cli"]


def _env(work: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CXR_", "PREFECT_API_URL"))}
    env.update({"CXR_HOME": str(work / "home"), "PREFECT_HOME": str(work / "prefect"), "PYTHONPATH": str(ROOT), **extra})
    return env


def _fastest(args: list[str], env: dict[str, str]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stderr[-2000:]}")
        best = min(best, time.perf_counter() - started)
    return round(best, 2)


def _synth(work: Path) -> list[str]:
    return [*CXR, "synth", str(work / "synth"), "--studies", "10", "--incoming", "0", "--image-size", "32"]


def main() -> None:
    from conftest import BackgroundProcess, free_port, wait_for_http

    work = Path(tempfile.mkdtemp(prefix="cxr-bench-overhead-"))
    env = _env(work)
    subprocess.run([*CXR, "db", "upgrade"], cwd=ROOT, env=env, check=True, capture_output=True)
    emit("cxr models list (read-only, no Prefect)", _fastest([*CXR, "models", "list"], env), "s", "no Prefect, no torch")
    refresh = _fastest([sys.executable, "-c", "import flows.refresh"], env)
    stages = _fastest([sys.executable, "-c", "import flows.stages"], env)
    emit("process importing flows.refresh (cxr refresh, cxr synth)", refresh, "s", f"flows.stages: {stages} s")
    emit("process importing flows.stages (model commands)", stages, "s", "torch, torchvision, Prefect")

    temporary = _fastest(_synth(work), env)
    temporary_slow = _fastest(_synth(work), {**env, "CXR_FAST_EXIT": "0"})
    emit("cxr synth (10 studies), temporary server", temporary, "s", f"{temporary_slow} s with CXR_FAST_EXIT=0")

    port = free_port()
    server = BackgroundProcess(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        work / "server.log",
    ).start()
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/health", 180, server.process)
        running = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
        reused = _fastest(_synth(work), running)
        reused_slow = _fastest(_synth(work), {**running, "CXR_FAST_EXIT": "0"})
    finally:
        server.stop()
    emit(
        "cxr synth (10 studies), running Prefect server",
        reused,
        "s",
        f"{reused_slow} s with CXR_FAST_EXIT=0; temporary server {temporary} s; issue's reference 38 s",
    )


if __name__ == "__main__":
    main()
