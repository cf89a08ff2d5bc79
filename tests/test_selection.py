"""Choosing the champion, both ways, through the real Prefect flows on a real database: a better
baseline becomes champion and is served by nightly scoring; a worse one does not; a candidate
with the better test figure but the worse validation figure is not chosen; a validation split
too small to rank switches to patient-grouped cross-validation, whose figure is the one
:func:`cxrmodel.training.candidates.cross_validate_candidates` computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, text

from cxrmodel.config import ClassicalConfig, DataConfig, EvaluationConfig, SynthConfig, ThresholdConfig
from cxrmodel.data.metadata import AgeScaler
from cxrmodel.data.synth import generate_dataset
from cxrmodel.findings import FINDINGS
from cxrmodel.models.classical import PixelLogisticModel
from db import registry
from db.engine import get_engine, session_scope
from db.models import ModelVersion, Prediction

pytestmark = pytest.mark.slow

DATA = DataConfig(image_size=32, balancing="none", val_fraction=0.2, test_fraction=0.2)
EVALUATION = EvaluationConfig(n_bootstrap=0, embedding_map=False, min_validation_studies=10)
SIDE = 4
SEX = SIDE * SIDE + 1  # feature index of sex (F = 1) after the pixels and age


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic-selection")
    generate_dataset(root, SynthConfig(n_studies=150, n_incoming=6, image_size=64, seed=11), workers=1)
    return root


def _refresh(root: Path, home: Path, url: str) -> None:
    from flows.stages import refresh_flow

    refresh_flow(str(root), "synthetic", str(root / "incoming"), DATA, dataset_report=False, home=str(home), database_url=url)


def _hand_made(url: str, home: Path, name: str, sex_weight: float) -> int:
    """A pixel-logistic version that reads only sex for Effusion (the sign of ``sex_weight``
    says which sex it calls positive) and is constant for every other finding."""
    d = SIDE * SIDE + 3
    coef = np.zeros((len(FINDINGS), d), np.float32)
    coef[FINDINGS.index("Effusion"), SEX] = sex_weight
    model = PixelLogisticModel(
        SIDE, 1.0, np.zeros(d, np.float32), np.ones(d, np.float32), coef, np.zeros(len(FINDINGS), np.float32),
        np.full(len(FINDINGS), np.nan, np.float32),
    )  # fmt: skip
    path = home / "models" / name / "pixel_logistic.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {"image_size": DATA.image_size, "age_scaler": AgeScaler(0.0, 100.0, 50.0).to_dict()}
    with session_scope(url) as s:
        return registry.register_model_version(
            s, name=name, kind="pixel_logistic", config=config, artifact_path=str(path), sha256=model.save(path)
        ).id


def _effusion_by_sex(url: str, positive_sex: dict[str, str]) -> None:
    """Relabel Effusion: positive exactly for the studies of ``positive_sex[split]``."""
    with get_engine(url).begin() as conn:
        conn.execute(text("DELETE FROM study_labels WHERE finding = 'Effusion'"))
        for split, sex in positive_sex.items():
            conn.execute(
                text(
                    "INSERT INTO study_labels (study_id, finding, value) SELECT id, 'Effusion', 1 FROM studies "
                    "WHERE labelled AND split = :split AND sex = :sex"
                ),
                {"split": split, "sex": sex},
            )


def _status(url: str) -> dict[str, tuple[str, float | None, str | None]]:
    with session_scope(url) as s:
        return {m.name: (m.status, m.selection_score, m.selection_basis) for m in s.scalars(select(ModelVersion))}


def _choose(url: str, home: Path, ids: list[int], evaluation: EvaluationConfig = EVALUATION):
    from flows.stages import calibrate_flow, evaluate_flow, promote_flow, select_flow

    where = {"home": str(home), "database_url": url}
    for version_id in ids:
        calibrate_flow(version_id, ThresholdConfig(), **where)
    selection = select_flow(ids, evaluation, **where)
    tests = [evaluate_flow(v, promote=False, evaluation=evaluation, publish=False, **where).evaluation_id for v in ids]
    return selection, promote_flow(ids, tests, evaluation, **where), tests


def test_test_figures_never_choose(prefect_server, synthetic_root, database_url, tmp_path):
    """A reads Effusion from sex the way validation labels it, B the way the test split does:
    A wins on validation and is chosen although B is far better on the test split."""
    home = tmp_path / "home"
    _refresh(synthetic_root, home, database_url)
    _effusion_by_sex(database_url, {"train": "F", "val": "F", "test": "M"})
    a = _hand_made(database_url, home, "reads-val-way", 8.0)
    b = _hand_made(database_url, home, "reads-test-way", -8.0)
    selection, champion, tests = _choose(database_url, home, [a, b])
    assert selection.basis == "validation" and selection.chosen_id == a and champion
    status = _status(database_url)
    assert status["reads-val-way"][0] == "champion" and status["reads-test-way"][0] == "candidate"
    assert status["reads-val-way"][1] > status["reads-test-way"][1] and status["reads-val-way"][2] == "validation"
    with get_engine(database_url).connect() as conn:
        test_auroc = dict(conn.execute(text("SELECT model_version_id, macro_auroc FROM evaluations WHERE split = 'test'")).all())
    assert test_auroc[b] > test_auroc[a]  # the test figure says B; the choice is A all the same
    from db.queries import MODEL_COMPARISON, run_query

    columns, rows = run_query(database_url, *MODEL_COMPARISON)
    table = {r[0]: dict(zip(columns, r, strict=True)) for r in rows}
    assert table["reads-val-way"]["chosen on"] == "validation"
    assert float(table["reads-test-way"]["test macro AUROC"]) > float(table["reads-val-way"]["test macro AUROC"])


def test_a_better_baseline_becomes_champion_and_is_served_a_worse_one_does_not(
    prefect_server, synthetic_root, database_url, tmp_path
):
    from flows.stages import score_flow, train_classical_flow

    home = tmp_path / "home"
    where = {"home": str(home), "database_url": database_url}
    _refresh(synthetic_root, home, database_url)
    chance = _hand_made(database_url, home, "chance", 0.0)  # constant everywhere: AUROC 0.5
    _, champion, _ = _choose(database_url, home, [chance])
    assert champion and _status(database_url)["chance"][:2] == ("champion", 0.5)

    learned = train_classical_flow(DATA, ClassicalConfig(side=8, c=0.05), **where)
    selection, champion, _ = _choose(database_url, home, [learned])
    assert champion and selection.scores[learned] > 0.5 and selection.scores[chance] == 0.5
    with session_scope(database_url) as s:
        current = registry.champion(s)
        reason = registry.history(s)[0]["reason"]
    assert current.id == learned and current.kind == "pixel_logistic" and "on validation" in reason

    scored = score_flow(render_report=False, **where)  # the classical champion serves the night
    with session_scope(database_url) as s:
        served = s.scalars(select(Prediction.model_version_id).where(Prediction.scoring_run_id == scored.scoring_run_id)).all()
    assert served and set(served) == {learned}

    worse = _hand_made(database_url, home, "worse", -8.0)  # ranks Effusion backwards on the phantoms' sexes at best
    _, champion, _ = _choose(database_url, home, [worse])
    assert not champion and registry_champion(database_url) == learned
    assert _status(database_url)["worse"][1] < _status(database_url)[current.name][1]


def registry_champion(url: str) -> int:
    with session_scope(url) as s:
        return registry.champion(s).id


def test_small_validation_split_ranks_by_cross_validation(prefect_server, synthetic_root, database_url, tmp_path):
    """Every recipe is retrained per fold: the classical one, seed 004's network and the k-NN
    head on it (sharing the fold networks); the classical figure is the one cross_validate_candidates
    computes on the same folds; a version without a recipe cannot be ranked."""
    from cxrmodel.config import TrainConfig
    from cxrmodel.training.candidates import CandidateRecipe, cross_validate_candidates
    from db import studies
    from flows.stages import train_classical_flow, train_flow

    home = tmp_path / "home"
    where = {"home": str(home), "database_url": database_url}
    _refresh(synthetic_root, home, database_url)
    classical = ClassicalConfig(side=8, c=0.05)
    learned = train_classical_flow(DATA, classical, **where)
    network = train_flow(DATA, TrainConfig(epochs=1, batch_size=16), True, False, with_embedding_index=False, **where)
    hand = _hand_made(database_url, home, "no-recipe", 8.0)  # no recipe to retrain: cannot be ranked
    ids = [learned, network.model_version_id, network.knn_version_id, hand]
    cv = EVALUATION.model_copy(update={"min_validation_studies": 10_000, "cv_folds": 3, "cv_min_positives": 2})
    selection, champion, _ = _choose(database_url, home, ids, cv)
    assert selection.basis == "cross_validation" and champion
    assert selection.scores[hand] is None and all(0.0 < selection.scores[v] < 1.0 for v in ids[:3])
    assert selection.chosen_id == max(ids[:3], key=lambda v: selection.scores[v])
    with session_scope(database_url) as s:
        frame = studies.labelled_frame(s)
    expected = cross_validate_candidates(
        frame[frame["split"].isin(("train", "val"))], home / "cache", {"lr": CandidateRecipe("pixel_logistic", DATA, classical=classical)},
        n_folds=3, min_positives=2,
    )["lr"]  # fmt: skip
    assert len(expected.fold_scores) == 3 and selection.scores[learned] == pytest.approx(expected.mean)
    status = _status(database_url)
    assert {basis for _, _, basis in status.values()} == {"cross_validation"}
