"""``bench/gpu_check.sh`` cannot rot while no GPU is at hand: its ``--dry-run`` runs the same
training and scoring comparisons on the CPU at tiny sizes and prints every figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT


def test_gpu_check_dry_run_prints_both_comparisons():
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [str(REPO_ROOT / "bench" / "gpu_check.sh"), "--dry-run"], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [json.loads(line[6:]) for line in result.stdout.splitlines() if line.startswith("BENCH ")]
    figures = {row["figure"].split(",")[0]: row for row in rows}
    assert set(figures) == {
        "GPU check training: bare loop",
        "GPU check training: cxrmodel fit",
        "GPU check scoring: bare forward",
        "GPU check scoring: from 64px PNG files (score_batches)",
    }
    assert all(row["value"] > 0 for row in rows)
    assert "ratio" in figures["GPU check training: cxrmodel fit"]["reference"]
    assert "ratio" in figures["GPU check scoring: from 64px PNG files (score_batches)"]["reference"]
    assert "training " in result.stdout and "scoring " in result.stdout
