"""Refresh of a full-size NIH metadata file (112,120 rows in the real format, 30,805 patients)
with tiny generated PNGs present, into SQLite and (when CXR_TEST_POSTGRES_URL or
CXR_BENCH_POSTGRES_URL is set) PostgreSQL. Target: at most 60 s on 2 cores.

Also the image-cache build against a bare PIL decode-and-resize loop over the same files
(target: at least 0.8 of its throughput).
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import emit  # noqa: E402

N_ROWS = 112_120
N_PATIENTS = 30_805
TINY = 32


def write_dataset(root: Path) -> None:
    """Real header and column quirks; labels drawn at the NIH frequencies; 32x32 PNGs."""
    import numpy as np
    from PIL import Image

    from cxrmodel.data.synth.dataset import NIH_HEADER
    from cxrmodel.data.synth.labels import P_NO_FINDING, conditional_probabilities
    from cxrmodel.findings import FINDINGS, format_finding_labels

    marker = root / "complete"
    if marker.is_file():
        return
    rng = np.random.default_rng(0)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    patients = np.sort(rng.integers(1, N_PATIENTS + 1, size=N_ROWS))
    patients[:N_PATIENTS] = np.arange(1, N_PATIENTS + 1)
    patients.sort()
    q = conditional_probabilities()
    pixels = rng.integers(0, 256, size=(TINY, TINY), dtype=np.uint8)
    follow = {}
    with open(root / "Data_Entry_2017_v2020.csv", "w", newline="") as fh:
        fh.write(NIH_HEADER + "\n")
        w = csv.writer(fh, lineterminator="\n")
        for pid in patients:
            fu = follow.get(pid, 0)
            follow[pid] = fu + 1
            key = f"{pid:08d}_{fu:03d}.png"
            names = (
                []
                if rng.random() < P_NO_FINDING
                else [f for f, p in zip(FINDINGS, rng.random(14) < q, strict=True) if p] or ["Infiltration"]
            )
            w.writerow(
                [
                    key,
                    format_finding_labels(names),
                    fu,
                    pid,
                    int(rng.integers(1, 95)),
                    "MF"[int(rng.random() < 0.44)],
                    "AP" if rng.random() < 0.4 else "PA",
                    2500,
                    2048,
                    0.168,
                    0.168,
                ]
            )
            Image.fromarray(np.roll(pixels, int(pid) % TINY)).save(images / key, compress_level=1)
    marker.write_text("ok")


def refresh_once(root: Path, url: str, home: Path):
    from cxrmodel.config import DataConfig
    from db.engine import upgrade_database
    from tasks import data as data_tasks

    upgrade_database(url)
    started = time.perf_counter()
    run_id = data_tasks.start_refresh.fn(url, "nih-local", str(root), None)
    counts = data_tasks.ingest_labelled.fn(url, root, "nih-local", DataConfig(), run_id)
    data_tasks.finish_refresh.fn(url, run_id, [counts])
    return time.perf_counter() - started, counts


def cache_vs_bare(work: Path, n: int = 240, source_size: int = 1024, size: int = 224) -> tuple[float, float]:
    """Cache build over real-size PNGs (noisy copies of a 1024x1024 phantom) against a bare
    PIL decode-and-resize loop over the same files."""
    import numpy as np
    from PIL import Image

    from cxrmodel.data.cache import ImageCache
    from cxrmodel.data.synth.phantom import render_phantom, sample_anatomy

    rng = np.random.default_rng(0)
    base = render_phantom(frozenset(), sample_anatomy(rng), rng, size=source_size)
    folder = work / "cache-sources"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        path = folder / f"{i:08d}_000.png"
        Image.fromarray(np.clip(base.astype(np.int16) + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8)).save(path)
        files.append(path)
    t0 = time.perf_counter()
    for path in files:
        with Image.open(path) as im:
            np.asarray(im.convert("L").resize((size, size), Image.BILINEAR))
    bare = len(files) / (time.perf_counter() - t0)
    cache = ImageCache(work / "cache", size)
    t0 = time.perf_counter()
    failures = cache.build([(p.name, p) for p in files])
    ours = len(files) / (time.perf_counter() - t0)
    assert not failures, list(failures.items())[:3]
    return bare, ours


def main() -> None:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    root = Path(os.environ.get("CXR_BENCH_DATA", Path(tempfile.gettempdir()) / "cxr-bench-nih-112k"))
    t0 = time.perf_counter()
    write_dataset(root)
    emit(
        "refresh: write 112,120-row metadata + 32px PNGs (setup, cached)", round(time.perf_counter() - t0, 1), "s", "not a target"
    )
    home = Path(tempfile.mkdtemp(prefix="cxr-bench-refresh-"))

    from prefect.logging import disable_run_logger

    with disable_run_logger():
        seconds, counts = refresh_once(root, f"sqlite:///{home / 'cxr.db'}", home)
        emit("refresh: 112,120 rows into SQLite (first run)", round(seconds, 1), "s", "<= 60 s", seconds <= 60)
        again, counts2 = refresh_once(root, f"sqlite:///{home / 'cxr.db'}", home)
        emit(
            "refresh: same file again, SQLite (nothing changes)",
            round(again, 1),
            "s",
            f"added {counts2.added}, unchanged {counts2.unchanged}",
            counts2.added == 0,
        )
        pg = os.environ.get("CXR_BENCH_POSTGRES_URL") or os.environ.get("CXR_TEST_POSTGRES_URL")
        if pg:
            from sqlalchemy import create_engine, text
            from sqlalchemy.engine import make_url

            name = f"cxr_bench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(make_url(pg).set(database="postgres"), isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            try:
                seconds, _ = refresh_once(root, make_url(pg).set(database=name).render_as_string(hide_password=False), home)
                emit("refresh: 112,120 rows into PostgreSQL (first run)", round(seconds, 1), "s", "<= 60 s", seconds <= 60)
            finally:
                from db.engine import get_engine

                get_engine.cache_clear()
                with admin.connect() as conn:
                    conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        else:
            emit("refresh: PostgreSQL", None, "", "skipped: set CXR_BENCH_POSTGRES_URL")
    bare, ours = cache_vs_bare(home)
    emit(
        "image cache build, 1024px PNG -> 224px uint8",
        round(ours, 1),
        "img/s",
        f"ratio {ours / bare:.2f} of a bare PIL loop ({bare:.0f} img/s), target >= 0.8",
        ours / bare >= 0.8,
    )


if __name__ == "__main__":
    main()
