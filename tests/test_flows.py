"""The real Prefect flows, end to end, against the session's test server and a real database."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select
from test_run_links import run_artifacts

from cxrmodel.config import (
    CandidatesConfig,
    ClassicalConfig,
    DataConfig,
    EvaluationConfig,
    SynthConfig,
    ThresholdConfig,
    TrainConfig,
)
from cxrmodel.data.synth import generate_dataset
from cxrmodel.findings import FINDINGS
from cxrmodel.models.kinds import has_embedding_space
from db.engine import session_scope
from db.models import (
    ClassMetric,
    EpochMetric,
    Evaluation,
    ModelVersion,
    Prediction,
    QuarantinedRow,
    ScoringFailure,
    ScoringRun,
    Study,
)

pytestmark = pytest.mark.slow

TINY_DATA = DataConfig(image_size=32, balancing="none")
TINY_TRAIN = TrainConfig(epochs=1, batch_size=16, pos_weight_max=10.0)
CANDIDATES = CandidatesConfig(chexnet=TINY_TRAIN, classical=ClassicalConfig(side=8, c=0.05))
#: Rank on the small validation split (about 10 studies) rather than retrain every network per fold.
EVALUATION = EvaluationConfig(min_validation_studies=5)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic dataset with deliberate defects: a malformed metadata row, a row whose
    image is missing, a corrupt incoming PNG, an empty incoming file and an incoming PNG with
    no metadata at all."""
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, SynthConfig(n_studies=120, n_incoming=12, image_size=64, seed=3), workers=1)
    with open(root / "Data_Entry_2017_v2020.csv", "a", encoding="utf-8") as fh:
        fh.write("99999999_000.png,Effusion,0,99999999,57,M,PA,64,64,0.1,0.1\n")  # image missing
        fh.write("99999998_000.png,NotADisease,0,99999998,57,M,PA,64,64,0.1,0.1\n")  # unknown finding
        fh.write("99999997_000.png,Mass,0,99999997,230,M,PA,64,64\n")  # malformed: too few fields, age 230
    first = sorted((root / "images").glob("*.png"))[0]
    (root / "images" / "unreadable.bak").write_bytes(first.read_bytes())
    first.write_bytes(first.read_bytes()[:100])  # truncated: quarantined at cache build
    incoming = root / "incoming"
    pngs = sorted(incoming.glob("*.png"))
    data = pngs[0].read_bytes()
    (incoming / "corrupt_000.png").write_bytes(data[: len(data) // 3])
    (incoming / "empty_000.png").write_bytes(b"")
    shutil.copy(pngs[1], incoming / "nometa_000.png")
    return root


def _latest_artifacts() -> dict:
    """The newest artifact of every key, by key."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, FlowRunFilter, TaskRunFilter
    from prefect.client.schemas.sorting import ArtifactSort

    async def read() -> dict:
        async with get_client() as client:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(),
                flow_run_filter=FlowRunFilter(),
                task_run_filter=TaskRunFilter(),
                sort=ArtifactSort.CREATED_DESC,
                limit=200,
                offset=0,
            )
        latest = {}
        for a in artifacts:
            latest.setdefault(a.key, a)
        return latest

    return asyncio.run(read())


def _artifact_keys() -> set[str]:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, FlowRunFilter, TaskRunFilter
    from prefect.client.schemas.sorting import ArtifactSort

    async def read() -> set[str]:
        async with get_client() as client:
            # Every filter spelled out: this server rejects the nulls the client sends by default.
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(),
                flow_run_filter=FlowRunFilter(),
                task_run_filter=TaskRunFilter(),
                sort=ArtifactSort.KEY_ASC,
                limit=200,
                offset=0,
            )
            return {a.key for a in artifacts if a.key}

    return asyncio.run(read())


def _run_pipeline(root: Path, home: Path, url: str):
    from flows.pipeline import pipeline_flow

    return pipeline_flow(
        str(root),
        "synthetic",
        str(root / "incoming"),
        TINY_DATA,
        TINY_TRAIN,
        ThresholdConfig(),
        EVALUATION,
        candidates=CANDIDATES,
        home=str(home),
        database_url=url,
    )


@pytest.mark.timeout(1200)  # five candidates trained, ranked, evaluated and each served once
def test_pipeline_end_to_end_and_idempotent_reruns(prefect_server, synthetic_root, database_url, tmp_path):
    from flows.stages import refresh_flow, score_flow

    result = _run_pipeline(synthetic_root, tmp_path / "home", database_url)

    with session_scope(database_url) as s:
        labelled = s.scalar(select(func.count()).select_from(Study).where(Study.labelled.is_(True)))
        incoming = s.scalar(select(func.count()).select_from(Study).where(Study.labelled.is_(False)))
        assert labelled == 120
        assert incoming == 12 + 3
        reasons = {q.row_key: q.reason for q in s.scalars(select(QuarantinedRow))}
        assert reasons["99999999_000.png"] == "missing image file"
        assert "unknown finding" in reasons["99999998_000.png"].lower()
        assert any(k.startswith("99999997") or "line" in k for k in reasons)
        truncated = sorted((synthetic_root / "images").glob("*.png"))[0].name
        assert reasons[truncated].startswith("unreadable image")
        assert s.scalar(select(Study.status).where(Study.study_key == truncated)) == "quarantined"
        assert len(reasons) == 4
        assert result.refresh.quarantined == 4

        versions = {m.kind: m for m in s.scalars(select(ModelVersion))}
        assert set(versions) == {"densenet121_fpn", "knn_embedding", "mlp_embedding", "densenet121", "pixel_logistic"}
        assert versions["mlp_embedding"].parent_id == versions["densenet121_fpn"].id
        assert Path(versions["densenet121_fpn"].config["embedding_index"]).is_file()
        assert Path(versions["densenet121_fpn"].artifact_path).is_file()
        # every kind is a candidate ranked on validation; the best one is the champion
        assert {m.selection_basis for m in versions.values()} == {"validation"}
        best = max(versions.values(), key=lambda m: (m.selection_score, -m.id))
        assert [m.kind for m in versions.values() if m.status == "champion"] == [best.kind]
        assert result.candidates.selection.chosen_id == best.id and result.promoted
        assert result.candidates.chosen == {
            "densenet121_fpn": "network", "knn_embedding": "knn", "mlp_embedding": "mlp", "densenet121": "chexnet",
            "pixel_logistic": "classical",
        }[best.kind]  # fmt: skip
        model_dir = Path(versions["densenet121_fpn"].artifact_path).parent
        for name in (
            "model.safetensors",
            "optimizer.pt",
            "thresholds.json",
            "config.json",
            "validation_metrics.csv",
            "train.log",
        ):
            assert (model_dir / name).is_file(), name
        assert s.scalar(select(func.count()).select_from(EpochMetric)) == 2  # one epoch of each network

        evaluations = s.scalars(select(Evaluation)).all()
        assert len(evaluations) == 5 and {e.split for e in evaluations} == {"test"}  # the test split once per version
        for ev in evaluations:
            assert s.scalar(select(func.count()).select_from(ClassMetric).where(ClassMetric.evaluation_id == ev.id)) == 14
            metrics = {m.finding: m for m in ev.class_metrics}
            for m in metrics.values():
                assert m.tp + m.fp + m.tn + m.fn == ev.n_studies

        run = s.scalars(select(ScoringRun)).one()
        assert (run.n_candidates, run.n_scored, run.n_failed) == (15, 12, 3)
        failures = {
            k: r
            for k, r in s.execute(select(Study.study_key, ScoringFailure.reason).join(Study, Study.id == ScoringFailure.study_id))
        }
        assert set(failures) == {"corrupt_000.png", "empty_000.png", "nometa_000.png"}
        assert "empty" in failures["empty_000.png"]
        assert "metadata" in failures["nometa_000.png"]
        assert s.scalar(select(func.count()).select_from(Prediction)) == 12 * len(FINDINGS)

    report = Path(result.report)
    assert report.is_file()
    html = report.read_text()
    assert best.name in html and all(kind in html for kind in versions) and "Chosen on" in html
    # similar cases need an embedding space: a classical champion has none
    assert ('class="similar' in Path(result.scoring.report).read_text()) == has_embedding_space(best.kind)
    dataset_html = Path(result.refresh.dataset_report).read_text()
    assert "missing image file" in dataset_html and "Co-occurrence" in dataset_html

    # Every example query of the README runs on this database and returns what it should.
    from sqlalchemy import text

    from db.engine import get_engine
    from db.queries import EXAMPLE_QUERIES

    with get_engine(database_url).connect() as conn:
        rows = {title: conn.execute(text(sql), params).all() for title, (sql, params) in EXAMPLE_QUERIES.items()}
    assert {r[0] for r in rows["Failures of the latest night and their reasons"]} == {
        "corrupt_000.png",
        "empty_000.png",
        "nometa_000.png",
    }
    assert len(rows["Per-class metrics of the champion on the test split"]) == 14
    assert len(rows["One study's history across model versions"]) == 14  # 90000000_000.dcm, one model
    assert len(rows["Flag rate per finding per night"]) == 14
    flagged = rows["Studies scored in the latest night, with their flagged findings"]
    with session_scope(database_url) as s:
        n_flagged = s.scalar(select(func.count()).select_from(Prediction).where(Prediction.decision.is_(True)))
    assert len(flagged) == min(10, n_flagged)
    strongest = rows["Latest prediction per study and finding (the view), strongest Effusion calls"]
    assert [r[1] for r in strongest] == sorted((r[1] for r in strongest), reverse=True) and len(strongest) == 5

    # The Prefect UI shows the key results as artifacts with stable keys.
    keys = _artifact_keys()
    assert {
        "cxr-training-epochs",
        "cxr-thresholds",
        "cxr-per-class-metrics",
        "cxr-evaluation-summary",
        "cxr-evaluation-report",
        "cxr-nightly-scoring",
        "cxr-dataset-report",
    } <= keys
    # ... the champion's under the stable keys, each baseline's under its own.
    latest = _latest_artifacts()
    for base in ("cxr-per-class-metrics", "cxr-subgroup-metrics", "cxr-evaluation-summary", "cxr-thresholds"):
        assert best.name in latest[base].description, (base, latest[base].description)
        for kind in set(versions) - {best.kind}:
            assert versions[kind].name in latest[f"{base}-{kind.replace('_', '-')}"].description
    assert (
        "macro AUROC" in latest["cxr-evaluation-summary"].data
        and "| metric | value | 95% CI |" in latest["cxr-evaluation-summary"].data
    )
    for key in ("cxr-evaluation-report", "cxr-dataset-report", "cxr-scoring-report"):
        assert "](http://127.0.0.1:8000/reports/" in latest[key].data and "file://" not in latest[key].data

    # Rendering another version's evaluation (cxr report <id>) leaves the champion's key alone;
    # the run's first artifact (its only flow-level one) is the link to the report it wrote.
    from flows.stages import report_flow

    other = next(v for v in versions.values() if v.id != best.id)
    with session_scope(database_url) as s:
        other_evaluation = s.scalar(select(Evaluation.id).where(Evaluation.model_version_id == other.id))
    state = report_flow(other_evaluation, home=str(tmp_path / "home"), database_url=database_url, return_state=True)
    other_report = Path(state.result())
    after = _latest_artifacts()
    assert best.name in after["cxr-evaluation-report"].description
    assert other.name in after[f"cxr-evaluation-report-{other.kind.replace('_', '-')}"].description
    (link,) = [a for a in run_artifacts(state.state_details.flow_run_id) if a["task_run_id"] is None]
    url = f"http://127.0.0.1:8000/reports/{other_report.name}"
    assert link["key"] is None and url in link["data"]
    assert link["description"].splitlines()[0] == f"[Open the evaluation report]({url})"

    # A second refresh changes nothing; a second scoring run writes no new prediction.
    again = refresh_flow(
        str(synthetic_root),
        "synthetic",
        str(synthetic_root / "incoming"),
        TINY_DATA,
        home=str(tmp_path / "home"),
        database_url=database_url,
    )
    assert (again.added, again.updated) == (0, 0)

    # Repairing the truncated image: the next refresh sees the change and reactivates the study.
    bad = sorted((synthetic_root / "images").glob("*.png"))[0]
    original = (synthetic_root / "images" / "unreadable.bak").read_bytes()
    truncated_bytes = bad.read_bytes()
    bad.write_bytes(original)
    try:
        repaired = refresh_flow(
            str(synthetic_root),
            "synthetic",
            None,
            TINY_DATA,
            dataset_report=False,
            home=str(tmp_path / "home"),
            database_url=database_url,
        )
    finally:
        bad.write_bytes(truncated_bytes)  # the module-scoped dataset is shared with the next case
    assert repaired.updated == 1
    with session_scope(database_url) as s:
        assert s.scalar(select(Study.status).where(Study.study_key == bad.name)) == "active"
    score_flow(home=str(tmp_path / "home"), database_url=database_url)
    with session_scope(database_url) as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == 12 * len(FINDINGS)
        latest = s.scalars(select(ScoringRun).order_by(ScoringRun.id.desc())).first()
        assert (latest.n_candidates, latest.n_scored, latest.n_failed) == (3, 0, 3)

    # Every candidate kind can be champion and be served by nightly scoring.
    from db import registry

    for kind in sorted(set(versions) - {best.kind}):
        with session_scope(database_url) as s:
            registry.pin(s, versions[kind].name, f"serve the {kind} candidate")
        night = score_flow(render_report=False, home=str(tmp_path / "home"), database_url=database_url)
        with session_scope(database_url) as s:
            run = s.get(ScoringRun, night.scoring_run_id)
            # the 3 broken studies fail until their attempts run out, then are skipped (bounded retries)
            given_up = s.scalar(select(func.count()).select_from(Study).where(Study.status == "failed"))
            assert (run.model_version_id, run.n_scored) == (versions[kind].id, 12), kind
            assert (run.n_failed, given_up) in {(3, 0), (3, 3), (0, 3)}, kind
            served = select(func.count()).select_from(Prediction).where(Prediction.model_version_id == versions[kind].id)
            assert s.scalar(served) == 12 * len(FINDINGS), kind


def test_refresh_from_hugging_face_cache_offline(prefect_server, tmp_path, monkeypatch, database_url):
    """The real huggingface_hub code path against a pre-populated cache, offline."""
    import huggingface_hub.constants as hf_constants
    from hub_fixtures import FakeHubCache, _repo_files

    from cxrmodel.config import HubConfig
    from flows.stages import refresh_flow

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    cache = FakeHubCache(tmp_path / "hf-cache")
    commit = cache.commit(_repo_files())
    hub = HubConfig(repo_id=cache.repo_id, revision=commit, archives=[1, 2], cache_dir=str(cache.root))
    result = refresh_flow(
        str(tmp_path / "nih"),
        "huggingface",
        None,
        DataConfig(image_size=32),
        hub,
        home=str(tmp_path / "home"),
        database_url=database_url,
    )
    assert (result.added, result.quarantined) == (3, 0)
    with session_scope(database_url) as s:
        studies = {st.study_key: st for st in s.scalars(select(Study))}
        assert set(studies) == {"00000001_000.png", "00000002_000.png", "00000013_003.png"}
        assert studies["00000013_003.png"].split == "test"  # the official test list was honoured
        assert all(st.source == "huggingface" for st in studies.values())
        assert Path(studies["00000001_000.png"].image_path).is_file()
