"""The demo end to end on a fresh home: wall time per stage and macro AUROC on the test split.

Targets (issue 14): the whole demo in at most 300 s after the install on 2 CPU cores, the
champion's macro AUROC on the synthetic test split at least 0.90. On a shared machine the wall
time says more about the neighbours than about the demo: the CPU seconds (user + system) are
printed beside it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import emit  # noqa: E402


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="cxr-bench-demo-"))
    os.environ["CXR_HOME"] = str(home)
    os.environ.pop("CXR_DATABASE_URL", None)
    from flows.cli_support import use_running_prefect_server

    use_running_prefect_server()
    from sqlalchemy import text

    from cxrmodel.config import SynthConfig
    from db.engine import get_engine
    from deployments.settings import Settings
    from flows.cli_support import pipeline_config
    from flows.demo import cpu_seconds, run_demo

    settings = Settings()
    config = pipeline_config(None)  # --config, else $CXR_CONFIG, else the shipped demo
    synth = config.synth or SynthConfig()
    started = time.perf_counter()
    result = run_demo(settings, config, synth)
    total = time.perf_counter() - started
    synth_seconds = total - sum(result.timings.values())
    emit(
        f"demo: synthesise {synth.n_studies:,} + {synth.n_incoming} studies (and Prefect start-up)",
        round(synth_seconds, 1),
        "s",
        "part of the 300 s budget",
    )
    for stage, seconds in result.timings.items():
        emit(f"demo: stage {stage}", seconds, "s", "part of the 300 s budget")
    emit("demo: total wall time", round(total, 1), "s", "<= 300 s", total <= 300)
    emit("demo: CPU seconds (user + system)", round(cpu_seconds(), 1), "s", "independent of other load")
    candidates = result.candidates
    chosen = candidates.chosen or "network"
    with get_engine(settings.resolved_database_url).connect() as conn:
        by_candidate = {
            name: conn.execute(text("SELECT macro_auroc FROM evaluations WHERE id = :id"), {"id": evaluation_id}).scalar_one()
            for name, evaluation_id in candidates.test_evaluations.items()
        }
        epoch_seconds = conn.execute(text("SELECT AVG(seconds), COUNT(*) FROM epoch_metrics")).one()
    emit(
        f"demo: seconds per training epoch (mean of {epoch_seconds[1]})",
        round(epoch_seconds[0], 1),
        "s",
        "demo config, 2 CPU cores",
    )
    auroc = by_candidate[chosen]
    emit(
        f"demo: macro AUROC of the champion ({chosen}, chosen on {candidates.selection.basis}), synthetic test split",
        round(auroc, 4),
        "",
        ">= 0.90",
        auroc >= 0.90,
    )
    for name, value in by_candidate.items():
        if name != chosen:
            emit(f"demo: macro AUROC, candidate {name}", round(value, 4), "", "compare with the champion above")


if __name__ == "__main__":
    main()
