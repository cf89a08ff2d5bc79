"""The demo: synthetic data -> the whole pipeline -> a summary and example SQL."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import text

from cxrmodel.config import PipelineConfig, Settings, SynthConfig
from db.engine import get_engine, upgrade_database
from db.queries import DEMO_QUERIES, EXAMPLE_QUERIES
from flows.pipeline import pipeline_flow
from flows.stages import synthesize_flow

def ensure_synthetic(root: Path, synth: SynthConfig) -> None:
    """Generate the dataset unless the same configuration is already on disk."""
    marker = root / "synth_config.json"
    wanted = synth.model_dump(mode="json")
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        print(f"synthetic dataset already at {root}")
        return
    synthesize_flow(str(root), synth)
    # One deliberately truncated incoming file: scoring records it as a failure with its reason.
    incoming = sorted((root / "incoming").glob("*.png"))
    if incoming:
        (root / "incoming" / "truncated_demo.png").write_bytes(incoming[0].read_bytes()[:200])
    marker.write_text(json.dumps(wanted, indent=2))


def _print_table(rows, columns) -> None:
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) if rows else len(str(c)) for i, c in enumerate(columns)]
    print("  " + "  ".join(str(c).ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  " + "  ".join(str(v).ljust(w) for v, w in zip(r, widths)))


def run_demo(settings: Settings, config: PipelineConfig, synth: SynthConfig) -> dict:
    home = settings.resolved_home
    url = settings.resolved_database_url
    home.mkdir(parents=True, exist_ok=True)
    data_root = home / "data" / "synthetic"
    ensure_synthetic(data_root, synth)
    upgrade_database(url)
    result = pipeline_flow(
        str(data_root), "synthetic", str(data_root / "incoming"), config.data, config.train, config.thresholds,
        config.evaluation, chexnet_baseline=config.chexnet_baseline, home=str(home), database_url=url,
    )
    print("\n=== chest X-ray pipeline demo (research tool, not for clinical use) ===")
    print(f"evaluation report : {result['report']}")
    if result["scoring"].get("report"):
        print(f"scoring report    : {result['scoring']['report']}")
    print(f"database          : {url}")
    print("stage seconds     : " + ", ".join(f"{k} {v:.0f}" for k, v in result["timings"].items()))
    engine = get_engine(url)
    with engine.connect() as conn:
        summary = conn.execute(
            text(
                """
                SELECT mv.name, mv.kind, mv.status, ROUND(CAST(e.macro_auroc AS NUMERIC), 3), ROUND(CAST(e.macro_f1 AS NUMERIC), 3), ROUND(CAST(e.micro_f1 AS NUMERIC), 3)
                FROM evaluations e JOIN model_versions mv ON mv.id = e.model_version_id
                WHERE e.split = :split ORDER BY e.id
                """
            ),
            {"split": "test"},
        ).all()
        print("\nModel comparison on the test split:")
        _print_table(summary, ["model", "kind", "status", "macro AUROC", "macro F1", "micro F1"])
        scoring = conn.execute(
            text("SELECT id, n_candidates, n_scored, n_failed, n_skipped FROM scoring_runs ORDER BY id DESC LIMIT 1")
        ).first()
        if scoring:
            print(
                f"\nLatest scoring run {scoring[0]}: {scoring[2]} scored, {scoring[3]} failed, {scoring[4]} skipped "
                f"of {scoring[1]} pending studies"
            )
        for title in DEMO_QUERIES:
            sql, params = EXAMPLE_QUERIES[title]
            print(f"\n-- {title}\n{' '.join(sql.split())}")
            res = conn.execute(text(sql), params)
            _print_table(res.all(), list(res.keys()))
    return result
