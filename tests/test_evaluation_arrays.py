"""An evaluation's arrays (labels, probabilities, study keys, calibrated probabilities) belong
to that evaluation: ``<model folder>/evaluations/<id>/predictions.npz``, recorded in
``evaluations.arrays_path``. A second evaluation of the same version on the same split writes
its own file and leaves the first one's alone (they used to share ``predictions_<split>.npz``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxrmodel.config import DataConfig, EvaluationConfig, SynthConfig
from cxrmodel.data.metadata import AgeScaler
from cxrmodel.data.synth import generate_dataset
from cxrmodel.findings import FINDINGS
from cxrmodel.models.artifacts import save_state_dict
from cxrmodel.models.networks import build_model
from db import evaluations, registry, thresholds
from db.engine import session_scope
from tasks import data as data_tasks
from tasks.evaluation import evaluate_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DATA = DataConfig(image_size=32, balancing="none")
QUICK = EvaluationConfig(n_bootstrap=0, embedding_map=False, calibration="platt")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaluated")
    generate_dataset(root, SynthConfig(n_studies=40, n_incoming=0, image_size=48, seed=4), workers=1)
    return root


def test_two_evaluations_of_one_version_and_split_keep_two_array_files(migrated_url, dataset, tmp_path):
    home = tmp_path / "home"
    run = data_tasks.start_refresh.fn(migrated_url, "synthetic", str(dataset), None)
    counts = [
        data_tasks.ingest_labelled.fn(migrated_url, dataset, "synthetic", DATA, run),
        data_tasks.build_cache.fn(migrated_url, home / "cache", DATA.image_size, run, "synthetic"),
    ]
    data_tasks.finish_refresh.fn(migrated_url, run, counts)
    torch.manual_seed(0)
    artifact = home / "models" / "net" / "model.safetensors"
    sha = save_state_dict(build_model("densenet121_fpn").state_dict(), artifact)
    with session_scope(migrated_url) as s:
        version = registry.register_model_version(
            s,
            name="net",
            kind="densenet121_fpn",
            artifact_path=str(artifact),
            sha256=sha,
            config={"image_size": DATA.image_size, "age_scaler": AgeScaler.fit([20, 80]).to_dict()},
        )
        low = thresholds.save_threshold_set(s, version.id, "fixed", {"value": 0.3}, dict.fromkeys(FINDINGS, 0.3), {})
        high = thresholds.save_threshold_set(s, version.id, "fixed", {"value": 0.7}, dict.fromkeys(FINDINGS, 0.7), {})

    first_id = evaluate_model.fn(migrated_url, home, version.id, low.id, "test", QUICK)
    with session_scope(migrated_url) as s:
        first = evaluations.evaluation(s, first_id)
    first_bytes = Path(first.arrays_path).read_bytes()
    second_id = evaluate_model.fn(migrated_url, home, version.id, high.id, "test", QUICK)
    with session_scope(migrated_url) as s:
        second = evaluations.evaluation(s, second_id)
        record = evaluations.evaluation_record(s, second_id)

    assert first_id != second_id and first.arrays_path != second.arrays_path
    for ev in (first, second):
        assert Path(ev.arrays_path) == artifact.parent / "evaluations" / str(ev.id) / "predictions.npz"
    assert Path(first.arrays_path).read_bytes() == first_bytes  # untouched by the second evaluation
    assert record.arrays_path == second.arrays_path
    with np.load(second.arrays_path) as stored:
        assert set(stored.files) == {"y_true", "y_prob", "study_key", "y_prob_calibrated"}
        assert stored["y_prob"].shape == (second.n_studies, len(FINDINGS))
    assert not (artifact.parent / "predictions_test.npz").exists()


def test_validation_predictions_are_reused_only_for_the_same_studies(tmp_path):
    """What calibration, selection and evaluation share: the kept probabilities come back for the
    same studies and images, and are recomputed when a study or its image changes."""
    import pandas as pd

    from cxrmodel.evaluation.evaluate import predict_split_reusing

    class Counting:
        calls = 0

        def predict_frame(self, rows, cache_root):
            Counting.calls += 1
            return np.full((len(rows), 14), 0.1 * Counting.calls, dtype=np.float32)

    frame = pd.DataFrame(
        {"study_key": ["a", "b", "c"], "content_hash": ["1", "2", "3"], "split": ["val", "val", "test"]}
        | {f: [0, 1, 0] for f in FINDINGS}
    )
    store = tmp_path / "val.npz"
    first = predict_split_reusing(Counting(), frame, "val", tmp_path, store)
    again = predict_split_reusing(Counting(), frame, "val", tmp_path, store)
    assert Counting.calls == 1 and np.array_equal(first.probabilities, again.probabilities) and len(again.labels) == 2
    changed = frame.assign(content_hash=["1", "9", "3"])  # b's image changed
    assert predict_split_reusing(Counting(), changed, "val", tmp_path, store).probabilities[0, 0] == np.float32(0.2)
    assert Counting.calls == 2
