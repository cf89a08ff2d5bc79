"""What the store promises, on SQLite and PostgreSQL: a metric it does not know is refused
with its name (never dropped), a status or kind outside its vocabulary is refused by the
database itself, and what it hands out are plain frozen entities that cover their table."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from cxrmodel.findings import FINDINGS
from db import entities, evaluations, registry, scoring, studies, thresholds, training
from db.engine import get_engine, session_scope
from db.models import Evaluation, ModelVersion, RefreshRun, ScoringRun, Study, TrainingRun

AGGREGATES = {
    "n_studies": 10,
    "macro_auroc": 0.8,
    "micro_auroc": 0.8,
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
PER_CLASS = {
    "finding": "Mass",
    "n_positive": 1,
    "auroc": 0.7,
    "pr_auc": 0.5,
    "f1": 0.5,
    "precision": 0.5,
    "recall": 0.5,
    "specificity": 0.5,
    "npv": 0.5,
    "brier": 0.2,
    "threshold": 0.5,
    "tp": 1,
    "fp": 1,
    "tn": 1,
    "fn": 1,
}
EPOCH = {
    "epoch": 1,
    "train_loss": 0.7,
    "val_loss": 0.6,
    "mean_precision": 0.3,
    "mean_recall": 0.4,
    "macro_f1": 0.3,
    "mean_auroc": 0.6,
    "learning_rate": 1e-3,
    "seconds": 2.0,
    "images_per_second": 40.0,
}


@pytest.fixture
def version_id(migrated_url) -> int:
    with session_scope(migrated_url) as s:
        version = registry.register_model_version(
            s, name="m", kind="densenet121_fpn", config={}, artifact_path="/m", sha256="0" * 64
        )
        thresholds.save_threshold_set(s, version.id, "fixed", {}, dict.fromkeys(FINDINGS, 0.5), {})
        return version.id


@pytest.mark.parametrize(
    ("aggregates", "per_class", "subgroups", "named"),
    [
        ({**AGGREGATES, "macro_aurox": 0.9}, [PER_CLASS], [], "'macro_aurox'"),
        (AGGREGATES, [{**PER_CLASS, "f1_score": 0.5}], [], "'f1_score'"),
        (
            AGGREGATES,
            [PER_CLASS],
            [{"attribute": "sex", "group": "F", "n_studies": 4, "macro_auroc_gap": 0.1}],
            "'macro_auroc_gap'",
        ),
    ],
    ids=["aggregate", "per-class", "subgroup"],
)
def test_save_evaluation_refuses_a_key_it_does_not_know(migrated_url, version_id, aggregates, per_class, subgroups, named):
    with pytest.raises(ValueError, match=named), session_scope(migrated_url) as s:
        evaluations.save_evaluation(s, version_id, None, "test", aggregates, per_class, subgroups)
    with session_scope(migrated_url) as s:  # nothing half-written
        assert evaluations.latest_evaluation(s, version_id, "test") is None


def test_record_epoch_refuses_a_key_it_does_not_know_and_keeps_the_rest(migrated_url, version_id):
    with session_scope(migrated_url) as s:
        run = training.start_training_run(s, architecture="densenet121_fpn", config={})
        training.record_epoch(s, run.id, EPOCH)  # every key of EpochResult.as_dict() is a column
        with pytest.raises(ValueError, match="'val_los'"):
            training.record_epoch(s, run.id, {**EPOCH, "epoch": 2, "val_los": 0.5})
        training.complete_training_run(s, run.id, version_id, best_epoch=1, best_metric=0.3)
    with session_scope(migrated_url) as s:
        history = training.epoch_history(s, version_id)
    assert [h["epoch"] for h in history] == [1] and history[0]["images_per_second"] == 40.0


BAD_VALUES = [
    (Study, {"study_key": "x", "source": "s", "image_path": "/x", "labelled": False, "status": "activ"}),
    (Study, {"study_key": "x", "source": "s", "image_path": "/x", "labelled": False, "split": "training"}),
    (ModelVersion, {"name": "m", "kind": "resnet50", "config": {}, "artifact_path": "/m", "sha256": "0" * 64}),
    (
        ModelVersion,
        {"name": "m", "kind": "densenet121", "config": {}, "artifact_path": "/m", "sha256": "0" * 64, "status": "champ"},
    ),
    (RefreshRun, {"source": "s", "location": "/", "status": "done"}),
    (TrainingRun, {"architecture": "densenet121_fpn", "config": {}, "status": "ok"}),
    (TrainingRun, {"architecture": "knn_embedding", "config": {}}),
]


@pytest.mark.parametrize(("model", "values"), BAD_VALUES, ids=lambda v: v.__name__ if isinstance(v, type) else next(iter(v)))
def test_the_database_refuses_a_value_outside_its_vocabulary(migrated_url, model, values):
    with pytest.raises(IntegrityError, match="ck_"), session_scope(migrated_url) as s:
        s.add(model(**values))


def test_a_raw_insert_is_checked_too(migrated_url, version_id):
    """Whoever writes the row (another system, plain SQL), the CHECK holds."""
    with session_scope(migrated_url) as s:
        tset = thresholds.active_threshold_set(s, version_id)
        run = scoring.start_scoring_run(s, model_version_id=version_id, threshold_set_id=tset.id)
    with pytest.raises(IntegrityError), get_engine(migrated_url).begin() as conn:
        conn.execute(text("UPDATE scoring_runs SET status = 'complete' WHERE id = :id"), {"id": run.id})
    with pytest.raises(IntegrityError), get_engine(migrated_url).begin() as conn:
        conn.execute(text("UPDATE promotions SET action = 'demote'"))
        conn.execute(
            text(
                "INSERT INTO promotions (model_version_id, reason, action, created_at) "
                "VALUES (:v, 'r', 'demote', CURRENT_TIMESTAMP)"
            ),
            {"v": version_id},
        )
    with pytest.raises(IntegrityError), get_engine(migrated_url).begin() as conn:
        conn.execute(text("UPDATE threshold_sets SET method = 'magic'"))


ENTITIES = [
    (entities.StudyInfo, Study),
    (entities.RefreshRunInfo, RefreshRun),
    (entities.ModelVersionInfo, ModelVersion),
    (entities.TrainingRunInfo, TrainingRun),
    (entities.EvaluationInfo, Evaluation),
    (entities.ScoringRunInfo, ScoringRun),
]


@pytest.mark.parametrize(("entity", "model"), ENTITIES, ids=lambda v: v.__name__)
def test_every_entity_covers_its_table_and_is_frozen(entity, model):
    assert {f.name for f in dataclasses.fields(entity)} == {c.name for c in model.__table__.columns}
    assert entity.__dataclass_params__.frozen


def test_the_store_hands_out_entities_with_enums(migrated_url, version_id):
    from db.statuses import ModelKind, ModelStatus, StudyStatus

    with session_scope(migrated_url) as s:
        studies.sync_studies(
            s, [{"study_key": "a.png", "source": "s", "image_path": "/a", "labelled": False, "split": "incoming"}]
        )
        pending = scoring.studies_to_score(s, version_id)
        version = registry.model_version(s, version_id)
    assert isinstance(pending[0], entities.StudyInfo) and pending[0].status is StudyStatus.ACTIVE
    assert version.kind is ModelKind.DENSENET121_FPN and version.status is ModelStatus.CANDIDATE
    with pytest.raises(dataclasses.FrozenInstanceError):
        version.status = ModelStatus.CHAMPION
