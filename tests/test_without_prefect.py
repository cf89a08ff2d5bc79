"""Every stage runs without Prefect: refresh, train, calibrate, evaluate, promote and score a
tiny synthetic dataset with :mod:`cxrmodel` and :mod:`db` calls alone, in a fresh interpreter
that never imports Prefect (checked at the end). This module imports neither Prefect nor
``tasks``/``flows``; :func:`run_every_stage` is what a notebook or another orchestrator would
write, and the test runs it as a subprocess on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def refresh_dataset(url: str, root: Path, cache_root: Path, data) -> None:
    """Labelled studies and an incoming folder into the database; the image cache filled."""
    from cxrmodel.data.cache import ImageCache
    from cxrmodel.data.incoming import read_incoming_folder
    from cxrmodel.data.labelled import read_labelled_dataset
    from db import refresh, studies
    from db.engine import session_scope
    from db.refresh import RefreshTotals

    labelled = read_labelled_dataset(root, "synthetic", data)
    incoming = read_incoming_folder(root / "incoming")
    with session_scope(url) as s:
        run = refresh.start_refresh(s, "synthetic", str(root), None)
        added = studies.sync_studies(s, labelled.records, labelled.labels).added + studies.sync_studies(s, incoming.records).added
        studies.set_splits(s, labelled.splits)
        refresh.record_quarantine(s, run.id, "synthetic", labelled.quarantined + incoming.quarantined)
        files = studies.labelled_files(s)
    failures = ImageCache(cache_root, data.image_size).build([(key, path, content_hash) for key, path, content_hash, _ in files])
    assert failures == {}, failures
    with session_scope(url) as s:
        done = refresh.finish_refresh(s, run.id, RefreshTotals(rows=labelled.n_rows, added=added))
    assert done.status == "completed" and done.n_added == len(labelled.records) + len(incoming.records)


def train_and_register(url: str, home: Path, data, train) -> int:
    """One epoch of the network, its artefacts, its training run and model version."""
    from cxrmodel.training.data import prepare_training_data, version_name
    from cxrmodel.training.network import train_network
    from cxrmodel.training.saving import save_trained_model
    from db import registry, studies, training
    from db.engine import session_scope

    with session_scope(url) as s:
        frame = studies.labelled_frame(s)
    prepared = prepare_training_data(frame, home / "cache", data, train)
    name = version_name(train.architecture)
    out = home / "models" / name
    out.mkdir(parents=True)
    with session_scope(url) as s:
        run = training.start_training_run(
            s,
            architecture=train.architecture,
            config=train.model_dump(mode="json"),
            device="cpu",
            n_train=len(prepared.train_rows),
            n_val=len(prepared.val_rows),
        )
    history: list[dict] = []

    def on_epoch(result) -> None:
        history.append(result.as_dict())
        with session_scope(url) as s:
            training.record_epoch(s, run.id, result.as_dict())

    model, fit = train_network(prepared, out, train, on_epoch)
    saved = save_trained_model(out, name, model, fit, prepared, data, train, history)
    with session_scope(url) as s:
        version = registry.register_model_version(
            s,
            name=name,
            kind=train.architecture,
            config=saved.config,
            artifact_path=str(saved.artifact_path),
            sha256=saved.sha256,
            parameter_count=saved.parameter_count,
        )
        training.complete_training_run(s, run.id, version.id, fit.best_epoch, fit.best_metric)
        assert [e["epoch"] for e in training.epoch_history(s, version.id)] == [1]
    return version.id


def calibrate_evaluate_promote(url: str, home: Path, version_id: int) -> None:
    """Thresholds fitted on validation, the test split evaluated (bootstrap, Platt calibration,
    subgroups), its arrays saved as the evaluation's own, and the version promoted."""
    import numpy as np

    from cxrmodel.config import EvaluationConfig, ThresholdConfig
    from cxrmodel.evaluation.evaluate import arrays_path, evaluate, predict_split, save_arrays
    from cxrmodel.evaluation.metrics import evaluate_multilabel
    from cxrmodel.evaluation.thresholds import calibrate_thresholds
    from cxrmodel.findings import FINDINGS
    from cxrmodel.models.loading import load_model_version
    from db import evaluations, registry, studies, thresholds
    from db.engine import session_scope

    with session_scope(url) as s:
        files = registry.model_version_files(s, version_id)
        frame = studies.labelled_frame(s)
    model = load_model_version(files)
    val = predict_split(model, frame, "val", home / "cache")
    fitted = calibrate_thresholds(val.labels, val.probabilities, ThresholdConfig())
    fitted_val_auroc = evaluate_multilabel(val.labels, val.probabilities, fitted.thresholds).aggregates["macro_auroc"]
    with session_scope(url) as s:
        tset = thresholds.save_threshold_set(s, version_id, fitted.method, {}, fitted.as_dict(), fitted.notes)
    test = predict_split(model, frame, "test", home / "cache")
    result = evaluate(
        test.labels,
        test.probabilities,
        np.array([tset.values[f] for f in FINDINGS]),
        test.frame,
        EvaluationConfig(n_bootstrap=20, calibration="platt", subgroup_min_studies=2),
        validation=(val.labels, val.probabilities),
        embeddings=model.embed_frame(test.frame, home / "cache"),
        inference_ms_per_image=test.ms_per_image,
    )
    with session_scope(url) as s:
        stored = evaluations.save_evaluation(
            s, version_id, tset.id, "test", result.aggregates, result.per_class, result.subgroups
        )
        evaluations.set_paths(
            s, stored.id, arrays_path=str(save_arrays(arrays_path(Path(files.artifact_path).parent, stored.id), result.arrays))
        )
        registry.record_selection(s, {version_id: fitted_val_auroc}, "validation")
        decision = registry.promote_selected(s, [version_id])
        record = evaluations.evaluation_record(s, stored.id)
    assert decision.promote and decision.champion and record.model_status == "champion"
    assert len(record.per_class) == len(FINDINGS) and record.aggregates["n_bootstrap"] == 20 and record.subgroups
    assert Path(record.arrays_path).is_file()


def score_pending(url: str, expected: int) -> None:
    """The champion scores every incoming study, batch by batch, like the nightly run."""
    from cxrmodel.evaluation.metrics import apply_thresholds
    from cxrmodel.inference import score_studies
    from cxrmodel.models.loading import load_model_version
    from db import registry, scoring
    from db.engine import session_scope

    with session_scope(url) as s:
        plan, _ = scoring.plan_scoring_run(s, chunk_size=4)
        model = load_model_version(registry.model_version_files(s, plan.model_version_id))
    for chunk in plan.chunks:
        with session_scope(url) as s:
            pending = scoring.studies_by_id(s, chunk)
        for batch in score_studies(model, pending, batch_size=4, device="cpu"):
            decisions = apply_thresholds(batch.probabilities, plan.thresholds)
            with session_scope(url) as s:
                scoring.commit_batch(s, plan, batch.study_ids, batch.probabilities, decisions, batch.failures)
    with session_scope(url) as s:
        run = scoring.finish_scoring_run(s, plan.scoring_run_id)
        summary = scoring.scoring_summary(s, run.id)
        assert scoring.study_ids_to_score(s, plan.model_version_id) == []
    assert run.status == "completed" and run.n_candidates == expected == run.n_scored + run.n_failed
    assert summary.n_scored == run.n_scored


def run_every_stage(work: Path, url: str) -> None:
    import torch

    from cxrmodel.config import DataConfig, SynthConfig, TrainConfig
    from cxrmodel.data.synth import generate_dataset
    from db.engine import upgrade_database

    torch.set_num_threads(1)
    data = DataConfig(image_size=32, balancing="none")
    train = TrainConfig(epochs=1, batch_size=16, pos_weight_max=10.0, device="cpu", augmentation="none")
    root, home = work / "nih", work / "home"
    generate_dataset(root, SynthConfig(n_studies=60, n_incoming=6, image_size=32, seed=1), workers=1)
    upgrade_database(url)
    refresh_dataset(url, root, home / "cache", data)
    version_id = train_and_register(url, home, data, train)
    calibrate_evaluate_promote(url, home, version_id)
    score_pending(url, expected=6)
    assert "prefect" not in sys.modules, "a stage imported Prefect"


def test_every_stage_runs_without_prefect(database_url, tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, __file__, str(tmp_path), database_url], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "every stage ran without prefect" in done.stdout


if __name__ == "__main__":
    run_every_stage(Path(sys.argv[1]), sys.argv[2])
    print("every stage ran without prefect", flush=True)
