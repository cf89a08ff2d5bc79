"""The champion/challenger registry: automatic promotion both ways, pin, unpin and rollback,
on SQLite and PostgreSQL, and through the ``cxr models`` CLI."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cxrmodel.findings import FINDINGS
from db import evaluations, registry, thresholds
from db.engine import session_scope
from db.lookup import NotFound
from db.models import ModelVersion, Promotion
from tasks.selection import promote_selected


def promote_if_better(url: str, version_id: int, metric: str = "macro_auroc", margin: float = 0.0) -> bool:
    return promote_selected.fn(url, [version_id], metric, margin)


def _version(session, name: str, kind: str = "densenet121_fpn", calibrated: bool = True) -> int:
    version = registry.register_model_version(
        session, name=name, kind=kind, config={}, artifact_path=f"/models/{name}", sha256="0" * 64
    )
    if calibrated:
        thresholds.save_threshold_set(session, version.id, "youden", {}, {f: 0.5 for f in FINDINGS}, {})
    return version.id


def _select(session, version_id: int, macro_auroc: float, basis: str = "validation") -> None:
    """The figure the registry ranks by (what the selection records)."""
    registry.record_selection(session, {version_id: macro_auroc}, basis)


def _evaluate(session, version_id: int, macro_auroc: float, split: str = "test") -> None:
    aggregates = {
        "n_studies": 10,
        "macro_auroc": macro_auroc,
        "micro_auroc": macro_auroc,
        "macro_f1": 0.5,
        "micro_f1": 0.5,
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
    tset = thresholds.active_threshold_set(session, version_id)
    evaluations.save_evaluation(session, version_id, tset.id if tset else None, split, aggregates, [])


def _statuses(url: str) -> dict[str, tuple[str, bool]]:
    with session_scope(url) as s:
        return {v.name: (v.status, v.pinned) for v in s.scalars(select(ModelVersion))}


@pytest.fixture
def two_versions(migrated_url):
    with session_scope(migrated_url) as s:
        old = _version(s, "old")
        new = _version(s, "new")
        _select(s, old, 0.80)
    return migrated_url, old, new


def test_first_evaluated_version_becomes_champion(two_versions):
    url, old, _ = two_versions
    assert promote_if_better(url, old) is True
    assert _statuses(url)["old"] == ("champion", False)


@pytest.mark.parametrize(
    ("challenger_auroc", "margin", "promoted"), [(0.85, 0.0, True), (0.85, 0.05, False), (0.79, 0.0, False), (0.80, 0.0, False)]
)
def test_challenger_is_promoted_only_when_it_beats_the_champion_by_the_margin(two_versions, challenger_auroc, margin, promoted):
    url, old, new = two_versions
    promote_if_better(url, old)
    with session_scope(url) as s:
        _select(s, new, challenger_auroc)
    assert promote_if_better(url, new, "macro_auroc", margin) is promoted
    expected = (
        {"old": ("retired", False), "new": ("champion", False)}
        if promoted
        else {"old": ("champion", False), "new": ("candidate", False)}
    )
    assert _statuses(url) == expected
    with session_scope(url) as s:
        reasons = [p.reason for p in s.scalars(select(Promotion).order_by(Promotion.id))]
    assert len(reasons) == (2 if promoted else 1)
    if promoted:
        assert "0.8500 beats champion old (0.8000)" in reasons[-1] and "on validation" in reasons[-1]


def test_pinned_champion_is_not_replaced_automatically_until_unpinned(two_versions):
    url, old, new = two_versions
    with session_scope(url) as s:
        registry.pin(s, "old", "audit in progress")
        _select(s, new, 0.95)
    assert promote_if_better(url, new) is False
    assert _statuses(url) == {"old": ("champion", True), "new": ("candidate", False)}
    with session_scope(url) as s:
        registry.unpin(s, "audit done")
    assert promote_if_better(url, new) is True
    assert _statuses(url) == {"old": ("retired", False), "new": ("champion", False)}


def test_rollback_restores_the_replaced_champion_pinned_and_toggles(two_versions):
    url, old, new = two_versions
    with session_scope(url) as s:
        registry.promote(s, old, "first")
        registry.promote(s, new, "better")
        assert registry.rollback(s, "new model misbehaves").name == "old"
    assert _statuses(url) == {"old": ("champion", True), "new": ("retired", False)}
    with session_scope(url) as s:
        assert registry.rollback(s, "false alarm").name == "new"
        log = registry.history(s)
    assert [(h["action"], h["champion"], h["previous"]) for h in log] == [
        ("rollback", "new", "old"),
        ("rollback", "old", "new"),
        ("promote", "new", "old"),
        ("promote", "old", None),
    ]
    assert log[0]["reason"] == "false alarm"


def test_registry_refuses_only_what_scoring_could_not_use(migrated_url):
    with session_scope(migrated_url) as s:
        _version(s, "uncalibrated", calibrated=False)
        _version(s, "knn", kind="knn_embedding")
        only = _version(s, "only")
        registry.promote(s, only, "first")
    for name, message in [
        ("uncalibrated", "no active threshold set"),
        ("missing", "no model version named"),
    ]:
        with pytest.raises(registry.RegistryError, match=message), session_scope(migrated_url) as s:
            registry.pin(s, name, "try")
    with pytest.raises(registry.RegistryError, match="nothing to roll back"), session_scope(migrated_url) as s:
        registry.rollback(s, "try")
    assert _statuses(migrated_url)["only"] == ("champion", False)
    with session_scope(migrated_url) as s:  # every kind can be champion, an embedding baseline too
        assert registry.pin(s, "knn", "the best on validation").status == "champion"


def test_models_cli_pins_lists_and_rolls_back(two_versions, monkeypatch):
    from flows.cli import app

    url, old, new = two_versions
    monkeypatch.setenv("CXR_DATABASE_URL", url)
    with session_scope(url) as s:
        registry.promote(s, old, "first")
    runner = CliRunner()
    result = runner.invoke(app, ["models", "pin", "new", "--reason", "reader study"])
    assert result.exit_code == 0, result.output
    assert "champion: new (pinned)" in result.output
    listing = {row["name"]: row for row in json.loads(runner.invoke(app, ["models", "list", "--json"]).output)}
    assert listing["new"]["status"] == "champion" and listing["new"]["pinned"]
    assert listing["old"]["selection_score"] == pytest.approx(0.8)
    assert listing["old"]["selection_basis"] == "validation"
    assert runner.invoke(app, ["models", "rollback"]).exit_code == 0
    assert _statuses(url) == {"old": ("champion", True), "new": ("retired", False)}
    history = runner.invoke(app, ["models", "history"]).output.splitlines()
    assert "rollback" in history[0] and "pin" in history[1] and "reader study" in history[1]
    refused = runner.invoke(app, ["models", "pin", "nope"])  # the cxr script prints it in one line, exit 2
    assert isinstance(refused.exception, NotFound) and "no model version 'nope'" in str(refused.exception)


def test_candidate_sets_and_recorded_cross_validation_figures(migrated_url):
    """A training run's candidates know each other; a cross-validated figure is kept with the
    context it was measured in, and read back only for that context."""
    with session_scope(migrated_url) as s:
        a, b, alone = _version(s, "a"), _version(s, "b"), _version(s, "alone")
        registry.record_candidate_set(s, [b, a])
        assert registry.candidate_set(s, a) == registry.candidate_set(s, b) == sorted([a, b])
        assert registry.candidate_set(s, alone) == [alone]
        registry.record_selection(s, {a: 0.61, b: None}, "cross_validation", "ctx-1")
    with session_scope(migrated_url) as s:
        assert registry.recorded_selection(s, a, "cross_validation", "ctx-1") == pytest.approx(0.61)
        assert registry.recorded_selection(s, a, "cross_validation", "ctx-2") is None  # other folds or studies
        assert registry.recorded_selection(s, a, "validation", "ctx-1") is None
        assert registry.recorded_selection(s, b, "cross_validation", "ctx-1") is None  # no figure recorded
        registry.record_selection(s, {a: 0.7}, "validation")
        assert registry.recorded_selection(s, a, "cross_validation", "ctx-1") is None  # replaced by a validation figure
        assert registry.model_version(s, a).config["candidates"] == sorted([a, b])
