"""Names instead of ids: model versions by id, name, ``latest`` or ``champion``, evaluations by
id or ``latest`` (:mod:`db.lookup`), and the ``cxr models list|show`` and ``cxr runs`` views of
them, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from db import evaluations, lookup, refresh, registry, training
from db.engine import session_scope
from db.models import ScoringRun, ThresholdSet
from db.refresh import RefreshTotals

LONG_NAME = "densenet121_fpn-" + "x" * 90 + "-end"
AGGREGATES = {
    "n_studies": 40,
    "micro_auroc": 0.9,
    "macro_f1": 0.61,
    "micro_f1": 0.6,
    "macro_precision": 0.5,
    "micro_precision": 0.5,
    "macro_recall": 0.5,
    "micro_recall": 0.5,
    "exact_match": 0.1,
    "hamming_loss": 0.2,
    "accuracy": 0.8,
    "lrap": 0.6,
    "mean_brier": 0.1,
}


def _epoch(epoch: int, macro_f1: float, mean_auroc: float) -> dict:
    return {
        "epoch": epoch,
        "train_loss": 0.5,
        "val_loss": 0.4,
        "mean_precision": 0.5,
        "mean_recall": 0.5,
        "macro_f1": macro_f1,
        "mean_auroc": mean_auroc,
        "learning_rate": 1e-3,
        "seconds": 1.0,
        "images_per_second": 10.0,
    }


@pytest.fixture
def registry_rows(migrated_url):
    """Three versions (the second with a 110-character name, trained for two epochs, best
    epoch 2, evaluated twice on test; the first champion), a refresh run and a scoring run."""
    with session_scope(migrated_url) as s:
        ids = [
            registry.register_model_version(
                s, name=name, kind="densenet121_fpn", config={"n": i}, artifact_path=f"/m/{i}", sha256="0" * 64
            ).id
            for i, name in enumerate(["first", LONG_NAME, "third"])
        ]
        run = training.start_training_run(s, architecture="densenet121_fpn", config={}, device="cpu", n_train=30, n_val=5)
        training.record_epoch(s, run.id, _epoch(1, 0.40, 0.70))
        training.record_epoch(s, run.id, _epoch(2, 0.55, 0.88))
        training.complete_training_run(s, run.id, ids[1], 2, 0.55)
        evaluations.save_evaluation(s, ids[1], None, "test", {**AGGREGATES, "macro_auroc": 0.81}, [])
        newest = evaluations.save_evaluation(
            s, ids[1], None, "val", {**AGGREGATES, "macro_auroc": 0.93, "macro_auroc_ci_low": 0.9}, []
        )
        evaluations.save_evaluation(
            s,
            ids[0],
            None,
            "test",
            {**AGGREGATES, "macro_auroc": 0.77, "macro_auroc_ci_low": 0.7, "macro_auroc_ci_high": 0.84},
            [],
        )
        registry.promote(s, ids[0], "first")
        refreshed = refresh.start_refresh(s, "synthetic", "/data", None)
        refresh.finish_refresh(s, refreshed.id, RefreshTotals(rows=12, added=10, quarantined=2))
        tset = ThresholdSet(model_version_id=ids[0], method="youden", params={}, is_active=True)
        s.add(tset)
        s.flush()
        s.add(ScoringRun(model_version_id=ids[0], threshold_set_id=tset.id, n_candidates=5, n_scored=4, n_failed=1))
    return migrated_url, ids, newest.id


def test_versions_resolve_by_id_name_latest_and_champion(registry_rows):
    url, ids, _ = registry_rows
    with session_scope(url) as s:
        assert lookup.model_version(s, str(ids[1])).name == LONG_NAME
        assert lookup.model_version(s, ids[2]).name == "third"
        assert lookup.model_version(s, LONG_NAME).id == ids[1]
        assert lookup.model_version(s, "latest").id == ids[2] == max(ids)
        assert lookup.model_version(s, "champion").id == ids[0]
        for ref in ("nope", "9999"):
            with pytest.raises(lookup.NotFound, match=f"no model version '{ref}'"):
                lookup.model_version(s, ref)


def test_evaluations_resolve_by_id_and_latest(registry_rows):
    url, ids, newest_val = registry_rows
    with session_scope(url) as s:
        latest = lookup.evaluation(s, "latest")
        assert latest.model_version_id == ids[0] and latest.split == "test"  # saved last
        assert lookup.evaluation(s, str(newest_val)).split == "val"
        with pytest.raises(lookup.NotFound, match="no evaluation '12345'"):
            lookup.evaluation(s, "12345")


def test_an_empty_registry_says_what_to_do(migrated_url):
    with session_scope(migrated_url) as s:
        with pytest.raises(lookup.NotFound, match="no champion yet"):
            lookup.model_version(s, "champion")
        with pytest.raises(lookup.NotFound, match="no model versions yet"):
            lookup.model_version(s, "latest")
        with pytest.raises(lookup.NotFound, match="no evaluations yet"):
            lookup.evaluation(s, "latest")
        with pytest.raises(lookup.NotFound, match="no labelled studies yet"):
            lookup.require_labelled_studies(s)


def test_summaries_carry_best_epoch_and_newest_test_figures(registry_rows):
    url, ids, _ = registry_rows
    with session_scope(url) as s:
        rows = {r.id: r for r in lookup.model_summaries(s)}
    long = rows[ids[1]]
    assert (long.val_macro_f1, long.val_macro_auroc) == (0.55, 0.88)  # epoch 2 is the best, not the last read
    assert long.test_macro_auroc == 0.81  # the val evaluation is not a test figure
    first = rows[ids[0]]
    assert first.status == "champion" and first.test_macro_auroc_ci == (0.7, 0.84) and first.val_macro_f1 is None
    assert rows[ids[2]].test_evaluation_id is None


def test_recent_runs_list_every_kind_with_counts(registry_rows):
    url, _, _ = registry_rows
    with session_scope(url) as s:
        runs = lookup.recent_runs(s, limit=20)
        newest_two = lookup.recent_runs(s, limit=2)
    kinds = {r.kind: r for r in runs}
    assert set(kinds) == {"refresh", "training", "evaluation", "scoring"}
    assert kinds["refresh"].status == "completed" and "12 rows: 10 added" in kinds["refresh"].counts
    assert "2 quarantined" in kinds["refresh"].counts
    assert kinds["scoring"].status == "running" and "4 scored, 1 failed, 0 skipped of 5" in kinds["scoring"].counts
    assert "best epoch 2 (0.550)" in kinds["training"].counts
    assert newest_two == runs[:2]


def test_models_cli_lists_long_names_whole_and_shows_by_name(registry_rows, monkeypatch):
    from flows.cli import app

    url, ids, _ = registry_rows
    monkeypatch.setenv("CXR_DATABASE_URL", url)
    runner = CliRunner()
    table = runner.invoke(app, ["models", "list"], env={"COLUMNS": "100"})
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert max(len(line) for line in lines) <= 160  # the table keeps its width
    name_column = "".join(line.split("│")[2].strip() for line in lines if line.count("│") > 3)
    assert LONG_NAME in name_column  # folded inside its cell, never cut or spilled into the next column
    assert "0.770 [0.700, 0.840]" in table.output and "champion" in table.output
    rows = json.loads(runner.invoke(app, ["models", "list", "--json"]).output)
    assert [r["id"] for r in rows] == ids and rows[1]["name"] == LONG_NAME
    shown = json.loads(runner.invoke(app, ["models", "show", "champion", "--json"]).output)
    assert shown["id"] == ids[0] and shown["config"] == {"n": 0} and shown["test_macro_auroc"] == 0.77
    by_name = runner.invoke(app, ["models", "show", LONG_NAME])
    assert by_name.exit_code == 0 and f"id                     {ids[1]}" in by_name.output
    runs = runner.invoke(app, ["runs", "--json"])
    assert {r["kind"] for r in json.loads(runs.output)} == {"refresh", "training", "evaluation", "scoring"}


def test_runs_show_the_trigger_and_filter_by_it(registry_rows, monkeypatch):
    """A busy service's requests do not push the nights off ``cxr runs``: ``--trigger batch``
    lists everything but them, ``--trigger on_demand`` only them."""
    from flows.cli import app

    url, ids, _ = registry_rows
    with session_scope(url) as s:
        tset = s.query(ThresholdSet).first()
        for _ in range(3):
            s.add(ScoringRun(model_version_id=ids[0], threshold_set_id=tset.id, trigger="on_demand", status="completed"))
    monkeypatch.setenv("CXR_DATABASE_URL", url)
    runner = CliRunner()

    def listed(*args):
        result = runner.invoke(app, ["runs", "--json", *args])
        assert result.exit_code == 0, result.output
        return [(r["kind"], r["trigger"]) for r in json.loads(result.output)]

    assert listed("--trigger", "on_demand") == [("scoring", "on_demand")] * 3
    batch = listed("--trigger", "batch")
    assert {kind for kind, _ in batch} == {"refresh", "training", "evaluation", "scoring"}
    assert {trigger for _, trigger in batch} == {"batch"}
    assert sorted(listed()) == sorted(batch + [("scoring", "on_demand")] * 3)
    table = runner.invoke(app, ["runs", "--trigger", "on_demand"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "trigger" in table.output and table.output.count("on_demand") == 3
    wrong = runner.invoke(app, ["runs", "--trigger", "cron"])
    assert wrong.exit_code == 2
