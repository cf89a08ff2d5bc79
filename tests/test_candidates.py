"""One candidate set, one trainer: the configuration's ``candidates:`` section decides what every
entry point trains (``cxr train`` as a real process, the weekly retrain deployment's flow with
the parameters the deployment carries, and the demo, which runs the pipeline), and
``cxr evaluate --promote`` ranks the whole set, computing each cross-validated figure once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

import configs
from cxrmodel.config import PipelineConfig, SynthConfig, load_pipeline_config
from cxrmodel.data.synth import generate_dataset
from cxrmodel.models.kinds import ModelKind
from db.engine import session_scope
from db.models import ModelVersion
from deployments.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
ALL_KINDS = {str(k) for k in ModelKind}

#: Every candidate on, each as small as it goes; cross-validation (2 folds) ranks them.
TINY = {
    "synth": {"n_studies": 60, "n_incoming": 3, "image_size": 32, "seed": 5},
    "data": {"image_size": 32, "balancing": "none"},
    "train": {"epochs": 1, "batch_size": 16, "pos_weight_max": 10.0, "device": "cpu"},
    "candidates": {
        "knn": True,
        "mlp": True,
        "chexnet": {"epochs": 1, "batch_size": 16, "device": "cpu"},
        "classical": {"side": 8, "c": 0.05},
    },
    "evaluation": {"n_bootstrap": 0, "embedding_map": False, "min_validation_studies": 1000, "cv_folds": 2},
}


@pytest.mark.parametrize("name", ["demo", "seed004", "small-real"])
def test_every_shipped_config_trains_the_chexnet_style_and_pixel_logistic_candidates(name):
    config = load_pipeline_config(configs.shipped(name))
    assert config.candidates.kinds() == ALL_KINDS
    assert config.candidates.chexnet.architecture == ModelKind.DENSENET121


def test_older_candidate_keys_are_read_into_the_section_with_a_warning():
    with pytest.warns(FutureWarning, match="'chexnet_baseline' by 'candidates.chexnet'"):
        old = PipelineConfig.model_validate(
            {"chexnet_baseline": {"epochs": 2}, "classical_baseline": True, "classical": {"side": 8}}
        )
    assert old.candidates.chexnet.epochs == 2 and old.candidates.chexnet.architecture == ModelKind.DENSENET121
    assert old.candidates.classical.side == 8
    with pytest.warns(FutureWarning):
        assert (
            PipelineConfig.model_validate({"classical_baseline": False, "classical": {"side": 8}}).candidates.classical is False
        )
    with pytest.raises(ValueError, match="keep 'candidates' only"):
        PipelineConfig.model_validate({"chexnet_baseline": {}, "candidates": {}})
    assert PipelineConfig().candidates.kinds() == {"densenet121_fpn", "knn_embedding", "mlp_embedding"}


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def tiny_config_on_validation(tmp_path_factory) -> Path:
    """The same candidates and recipes, ranked on validation instead of cross-validation: the
    retrain and demo entry points are about what gets trained, and cross-validation (every
    recipe retrained per fold) is tested once, through ``cxr evaluate --promote``."""
    path = tmp_path_factory.mktemp("config") / "tiny-validation.yaml"
    path.write_text(yaml.safe_dump({**TINY, "evaluation": {**TINY["evaluation"], "min_validation_studies": 1}}))
    return path


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, SynthConfig(n_studies=60, n_incoming=0, image_size=32, seed=5), workers=1)
    return root


def _cxr(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CXR_", "PREFECT_API_URL"))}
    env.update({"CXR_HOME": str(home), "PYTHONPATH": str(REPO_ROOT), "CXR_TORCH_THREADS": "1"})
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _versions(url: str) -> list[ModelVersion]:
    with session_scope(url) as session:
        rows = session.scalars(select(ModelVersion).order_by(ModelVersion.id)).all()
        session.expunge_all()
        return rows


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_each_entry_point_trains_the_same_candidates(
    prefect_server, tiny_config, tiny_config_on_validation, synthetic_root, tmp_path, monkeypatch
):
    from deployments.definitions import RETRAIN, deployment_specs
    from flows.demo import run_demo
    from flows.pipeline import retrain_flow
    from flows.stages import refresh_flow

    config = load_pipeline_config(tiny_config)
    expected = config.candidates.kinds()
    assert expected == ALL_KINDS

    # 1. `cxr train`, a real process, then `cxr evaluate latest --promote` twice
    home = tmp_path / "cli"
    _cxr(home, "refresh", str(synthetic_root), "--source", "synthetic", "--config", str(tiny_config))
    _cxr(home, "train", "--config", str(tiny_config))
    url = f"sqlite:///{home / 'cxr.db'}"
    trained = _versions(url)
    assert {v.kind for v in trained} == expected
    ids = sorted(v.id for v in trained)
    assert all(sorted(v.config["candidates"]) == ids for v in trained), "each version knows its candidate set"

    first = _cxr(home, "evaluate", "latest", "--promote", "--config", str(tiny_config))
    ranked = _versions(url)
    assert all(v.selection_basis == "cross_validation" and v.selection_score is not None for v in ranked), [
        (v.kind, v.selection_score) for v in ranked
    ]
    best = max(ranked, key=lambda v: (v.selection_score, -v.id))
    assert [v.id for v in ranked if v.status == "champion"] == [best.id]
    assert "not recomputed" not in first.stdout + first.stderr
    # the figures are stored: a second promotion reads them instead of retraining every recipe per fold
    second = _cxr(home, "evaluate", "latest", "--promote", "--config", str(tiny_config))
    assert (second.stdout + second.stderr).count("not recomputed") == len(ids)
    assert {v.id: v.selection_score for v in _versions(url)} == {v.id: v.selection_score for v in ranked}

    # 2. the weekly retrain deployment: its flow with exactly the parameters the deployment carries
    config = load_pipeline_config(tiny_config_on_validation)
    assert config.candidates == load_pipeline_config(tiny_config).candidates
    monkeypatch.setenv("CXR_CONFIG", str(tiny_config_on_validation))
    parameters = next(s for s in deployment_specs() if s.name == RETRAIN).parameters
    assert parameters["candidates"] == config.candidates.model_dump(mode="json")
    retrain_home = tmp_path / "retrain"
    retrain_url = f"sqlite:///{retrain_home / 'cxr.db'}"
    from db.engine import upgrade_database

    upgrade_database(retrain_url)
    refresh_flow(str(synthetic_root), "synthetic", None, config.data, home=str(retrain_home), database_url=retrain_url)
    retrain_flow(**parameters, home=str(retrain_home), database_url=retrain_url)
    assert {v.kind for v in _versions(retrain_url)} == expected

    # 3. the demo (the whole pipeline on its own synthetic set)
    demo_home = tmp_path / "demo"
    run_demo(Settings(home=demo_home), config, config.synth)
    assert {v.kind for v in _versions(f"sqlite:///{demo_home / 'cxr.db'}")} == expected
