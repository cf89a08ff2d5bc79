"""The demo: synthetic data -> the whole pipeline -> a summary and example SQL."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

from cxrmodel.config import PipelineConfig, SynthConfig
from db import registry
from db.engine import session_scope, upgrade_database
from db.queries import DEMO_QUERIES, EXAMPLE_QUERIES, LATEST_SCORING_RUN, MODEL_COMPARISON, run_query
from deployments.settings import Settings
from flows.pipeline import pipeline_flow
from flows.results import PipelineResult
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
    print("  " + "  ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  " + "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)))


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (the temporary
    Prefect server included): the demo's work, whatever else the machine is doing."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def choice_summary(url: str, result: PipelineResult) -> str:
    """Which candidate the registry chose and why (its figure and the basis), and what the
    figures are not: measurements on phantoms."""
    selection = result.candidates.selection
    metric = selection.metric.replace("_", " ").replace("auroc", "AUROC").replace("f1", "F1")
    with session_scope(url) as session:
        names = {v: registry.model_version(session, v) for v in selection.scores}
        current = registry.champion(session)
    ranked = sorted(
        ((score, names[v].name, names[v].kind) for v, score in selection.scores.items() if score is not None), reverse=True
    )
    basis = "the validation split" if selection.basis == "validation" else "patient-grouped cross-validation over train + val"
    lines = [f"Candidates ranked by {metric} on {basis} (never on the test split):"]
    lines += [f"  {score:.3f}  {name} ({kind})" for score, name, kind in ranked]
    if selection.chosen_id is not None:
        chosen = names[selection.chosen_id]
        figure = selection.scores[selection.chosen_id]
        verdict = (
            "and is the champion" if result.candidates.champion else f"but champion {current.name if current else '-'} stays"
        )
        lines.append(
            f"Chosen: {chosen.name} ({chosen.kind}), {metric} {figure:.3f} on {selection.basis.replace('_', '-')}, {verdict}."
        )
    lines.append(
        "These figures are measured on synthetic phantoms, not radiographs: they show the system works end to end, "
        "not how well any model reads a chest X-ray. Figures on real NIH images: docs/models.md, section 'Small real sets', "
        "and bench/real_data.py."
    )
    return "\n".join(lines)


def run_demo(settings: Settings, config: PipelineConfig, synth: SynthConfig) -> PipelineResult:
    """Synthesise (once per configuration), then the whole pipeline in one process: one
    Prefect server (the running one, or one temporary server for every flow of the demo)."""
    home = settings.resolved_home
    url = settings.resolved_database_url
    home.mkdir(parents=True, exist_ok=True)
    data_root = settings.layout.synthetic_data
    started = time.perf_counter()
    ensure_synthetic(data_root, synth)
    synth_seconds = time.perf_counter() - started
    upgrade_database(url)
    result = pipeline_flow(
        str(data_root),
        "synthetic",
        str(data_root / "incoming"),
        config.data,
        config.train,
        config.thresholds,
        config.evaluation,
        candidates=config.candidates,
        home=str(home),
        database_url=url,
    )
    print("\n=== chest X-ray pipeline demo (research tool, not for clinical use) ===")
    print(f"evaluation report : {result.report}")
    if result.scoring.report:
        print(f"scoring report    : {result.scoring.report}")
    print(f"database          : {url}")
    stages = {"synthesise (+ Prefect start-up)": synth_seconds, **result.timings}
    print("stage seconds     : " + ", ".join(f"{k} {v:.0f}" for k, v in stages.items()))
    print(f"CPU seconds       : {cpu_seconds():.0f} (user + system, this process and its children)")
    columns, rows = run_query(url, *MODEL_COMPARISON)
    print("\nModel comparison (chosen on validation or cross-validation; the test split only reports):")
    _print_table(rows, columns)
    print("\n" + choice_summary(url, result))
    _, latest = run_query(url, *LATEST_SCORING_RUN)
    if latest:
        run_id, n_candidates, n_scored, n_failed, n_skipped = latest[0]
        print(
            f"\nLatest scoring run {run_id}: {n_scored} scored, {n_failed} failed, {n_skipped} skipped of {n_candidates} pending studies"
        )
    for title in DEMO_QUERIES:
        sql, params = EXAMPLE_QUERIES[title]
        print(f"\n-- {title}\n{' '.join(sql.split())}")
        columns, rows = run_query(url, sql, params)
        _print_table(rows, columns)
    return result
