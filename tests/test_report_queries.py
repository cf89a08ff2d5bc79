"""db.report_queries on SQLite and PostgreSQL: every query the reports need, as plain values."""

from __future__ import annotations

from dataclasses import is_dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cxrmodel.findings import FINDINGS
from db import evaluations, refresh, registry, report_queries, scoring, studies, thresholds
from db.engine import session_scope
from db.models import RefreshRun
from db.statuses import StudyStatus

T0 = datetime(2025, 1, 2, 2, 0, tzinfo=UTC)
#: (key, split, labelled, positive findings)
STUDIES = [
    ("t1.png", "train", True, ("Effusion",)),
    ("t2.png", "train", True, ("Effusion", "Mass")),
    ("t3.png", "train", True, ()),
    ("t4.png", "train", True, ()),
    ("q1.png", "train", True, ("Mass",)),
    ("v1.png", "val", True, ()),
    ("s1.png", "test", True, ("Effusion",)),
    ("in1.png", "incoming", False, ()),
    ("in2.png", "incoming", False, ()),
    ("in3.png", "incoming", False, ()),
    ("bad.png", "incoming", False, ()),
]
#: Effusion probabilities of the scored studies: in1 and in2 tie.
EFFUSION = {"in1.png": 0.9, "in2.png": 0.9, "in3.png": 0.2}


def seed(url: str) -> dict:
    """Studies (one labelled training study quarantined), a model version with thresholds, two
    refresh runs around a scoring run of three studies (one more failed), and an evaluation."""
    records = [
        {
            "study_key": k,
            "patient_id": f"p-{k}",
            "follow_up": 0,
            "age": 50.0,
            "sex": "F",
            "view": "PA",
            "source": "synthetic" if labelled else "incoming",
            "split": split,
            "image_path": f"/images/{k}",
            "content_hash": "1:1",
            "labelled": labelled,
        }
        for k, split, labelled, _ in STUDIES
    ]
    labels = {k: {f: int(f in positive) for f in FINDINGS} for k, _, labelled, positive in STUDIES if labelled}
    with session_scope(url) as s:
        studies.sync_studies(s, records, labels)
        studies.set_status(s, ["q1.png"], StudyStatus.QUARANTINED)
        version = registry.register_model_version(
            s, name="net-v1", kind="densenet121", config={}, artifact_path="/models/net-v1/model.safetensors", sha256="0" * 64
        )
        tset = thresholds.save_threshold_set(s, version.id, "fixed", {}, dict.fromkeys(FINDINGS, 0.5), {})
        before = refresh.start_refresh(s, "synthetic", "/data", None)
        refresh.finish_refresh(s, before.id, error="source folder missing")
        after = refresh.start_refresh(s, "synthetic", "/data", None)
        refresh.record_quarantine(
            s, before.id, "synthetic", [{"row_key": "old.png", "row_number": 3, "reason": "age 150 outside 0-120", "raw": None}]
        )
        refresh.record_quarantine(
            s, after.id, "synthetic", [{"row_key": "new.png", "row_number": 4, "reason": "missing image file", "raw": None}]
        )
        for run_id, moment in ((before.id, T0 - timedelta(hours=1)), (after.id, T0 + timedelta(hours=1))):
            s.get(RefreshRun, run_id).started_at = moment
        run = scoring.start_scoring_run(s, model_version_id=version.id, threshold_set_id=tset.id, n_candidates=4, started_at=T0)
        ids = studies.study_ids(s)
        rows = [
            {
                "study_id": ids[k],
                "model_version_id": version.id,
                "finding": f,
                "threshold_set_id": tset.id,
                "scoring_run_id": run.id,
                "probability": (p := EFFUSION[k] if f == "Effusion" else 0.1),
                "decision": p >= 0.5,
            }
            for k in EFFUSION
            for f in FINDINGS
        ]
        scoring.write_predictions(s, rows)
        scoring.record_scoring_failures(s, run.id, {ids["bad.png"]: "unreadable DICOM"})
        scoring.add_scoring_counts(s, run.id, scored=3, failed=1)
        scoring.finish_scoring_run(s, run.id)
        aggregates = {
            "n_studies": 1,
            "macro_auroc": 0.7,
            "micro_auroc": 0.7,
            "macro_f1": 0.4,
            "micro_f1": 0.4,
            "macro_precision": 0.4,
            "micro_precision": 0.4,
            "macro_recall": 0.4,
            "micro_recall": 0.4,
            "exact_match": 0.1,
            "hamming_loss": 0.2,
            "accuracy": 0.8,
            "lrap": 0.5,
            "mean_brier": 0.1,
        }
        ev = evaluations.save_evaluation(s, version.id, tset.id, "test", aggregates, [], arrays_path="/arrays/ev.npz")
        return {"version_id": version.id, "run_id": run.id, "before": before.id, "after": after.id, "evaluation_id": ev.id}


@pytest.fixture
def seeded(migrated_url) -> tuple[str, dict]:
    return migrated_url, seed(migrated_url)


def test_scoring_report_data(seeded):
    url, ids = seeded
    with session_scope(url) as s:
        data = report_queries.scoring_report_data(s, ids["run_id"])
    assert data.run.model_version_id == ids["version_id"] and data.summary.model_name == "net-v1"
    assert (data.summary.n_scored, data.summary.n_failed, data.summary.flagged) == (3, 1, {"Effusion": 2})
    assert data.failures == [("bad.png", "unreadable DICOM")]
    assert list(data.top_studies) == list(FINDINGS)
    assert data.top_studies["Effusion"] == [("in1.png", 0.9), ("in2.png", 0.9), ("in3.png", 0.2)]  # ties by key
    assert all(len(rows) == 3 for rows in data.top_studies.values())
    # labelled training studies, quarantined ones included (5): Effusion 2, Mass 2 (q1 and t2)
    assert data.training_prevalence["Effusion"] == pytest.approx(2 / 5)
    assert data.training_prevalence["Mass"] == pytest.approx(2 / 5) and data.training_prevalence["Hernia"] == 0.0
    assert (data.last_refresh.id, data.last_refresh.status, data.last_refresh.error) == (
        ids["before"],
        "failed",
        "source folder missing",
    )


def test_top_studies_are_limited_per_finding(seeded):
    url, ids = seeded
    with session_scope(url) as s:
        top = report_queries.top_studies(s, ids["run_id"], ("Effusion", "Mass"), n=1)
    assert top == {"Effusion": [("in1.png", 0.9)], "Mass": [("in1.png", 0.1)]}


def test_no_scoring_run_is_an_error(migrated_url):
    with session_scope(migrated_url) as s, pytest.raises(ValueError, match="no scoring run"):
        report_queries.scoring_report_data(s, 404)


def test_dataset_report_data(seeded):
    url, ids = seeded
    with session_scope(url) as s:
        data = report_queries.dataset_report_data(s, ids["after"])
        latest = report_queries.dataset_report_data(s)
    assert data.refresh.id == ids["after"] and latest.refresh is None
    assert data.sources == ["synthetic"]  # active labelled studies only
    assert [(q.row_key, q.reason) for q in data.quarantined] == [
        ("new.png", "missing image file"),
        ("old.png", "age 150 outside 0-120"),
    ]
    assert all(is_dataclass(q) for q in data.quarantined)
    assert sorted(data.studies["study_key"]) == ["s1.png", "t1.png", "t2.png", "t3.png", "t4.png", "v1.png"]
    with session_scope(url) as s, pytest.raises(ValueError, match="no refresh run"):
        report_queries.dataset_report_data(s, 999)


def test_dataset_report_data_of_an_empty_database(migrated_url):
    with session_scope(migrated_url) as s:
        data = report_queries.dataset_report_data(s)
    assert (data.refresh, data.sources, data.quarantined, data.studies) == (None, [], [], None)


def test_evaluation_report_data(seeded):
    url, ids = seeded
    with session_scope(url) as s:
        data = report_queries.evaluation_report_data(s, ids["evaluation_id"])
        found = report_queries.studies_by_key(s, ["s1.png", "nope.png", "t1.png"])
    assert data.record.evaluation_id == ids["evaluation_id"] and data.model.name == "net-v1"
    assert data.arrays_file == Path("/arrays/ev.npz")
    assert "arrays_path" not in data.record.aggregates and data.record.aggregates["macro_auroc"] == 0.7
    assert data.studies_per_split == {"train": 4, "val": 1, "test": 1}  # active labelled only
    assert data.source == "synthetic" and data.epochs == []
    [row] = data.comparison
    assert (row["name"], row["is_current"], row["macro_auroc"], row["macro_auroc_ci_low"]) == ("net-v1", True, 0.7, None)
    assert set(found) == {"s1.png", "t1.png"} and found["s1.png"].image_path == "/images/s1.png"
    with session_scope(url) as s, pytest.raises(ValueError, match="no evaluation"):
        report_queries.evaluation_report_data(s, 999)


def test_the_arrays_file_is_the_evaluations_own_else_the_legacy_one():
    own = report_queries.evaluation_arrays_file("/e/7.npz", "/models/m/model.safetensors", "test")
    legacy = report_queries.evaluation_arrays_file(None, "/models/m/model.safetensors", "val")
    assert (own, legacy) == (Path("/e/7.npz"), Path("/models/m/predictions_val.npz"))
