"""Similar-case retrieval: an exact cosine index over study embeddings, the tasks that build and
query it against a real (SQLite) registry, and the similar cases in the scoring report."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics.pairwise import cosine_similarity

from cxrmodel.models.artifacts import ArtifactIntegrityError
from cxrmodel.explain.similarity import EmbeddingIndex, l2_normalise

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def unit(deg: float) -> list[float]:
    r = np.deg2rad(deg)
    return [np.cos(r), np.sin(r)]


@pytest.fixture
def fan() -> EmbeddingIndex:
    """Unit vectors at 0, 10, 30, 60, 90 and 180 degrees, stored at different lengths (the
    index normalises them, so only the angle counts)."""
    angles = [0, 10, 30, 60, 90, 180]
    lengths = [1.0, 3.0, 0.5, 7.0, 2.0, 10.0]
    vectors = np.array([np.multiply(unit(a), n) for a, n in zip(angles, lengths)], dtype=np.float32)
    return EmbeddingIndex(vectors, [f"a{a}" for a in angles])


def test_storage_is_l2_normalised(fan):
    np.testing.assert_allclose(np.linalg.norm(fan.vectors, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(fan.vector("a60"), unit(60), atol=1e-6)
    assert len(fan) == 6 and fan.dim == 2 and "a30" in fan and "a45" not in fan


def test_known_neighbours_and_cosines(fan):
    [hits] = fan.query(np.array([unit(22)]) * 4.0, k=3)  # query length does not matter either
    assert [k for k, _ in hits] == ["a30", "a10", "a0"]  # 8, 12 and 22 degrees away
    np.testing.assert_allclose([c for _, c in hits], np.cos(np.deg2rad([8, 12, 22])), atol=1e-6)

    [hits] = fan.query(np.array([unit(70)]), k=2)
    assert [k for k, _ in hits] == ["a60", "a90"]
    np.testing.assert_allclose([c for _, c in hits], np.cos(np.deg2rad([10, 20])), atol=1e-6)

    [hits] = fan.query(np.array([unit(205)]), k=6)  # everything, most similar first, down to negative cosines
    assert [k for k, _ in hits] == ["a180", "a90", "a60", "a0", "a10", "a30"]
    np.testing.assert_allclose([c for _, c in hits], np.cos(np.deg2rad([25, 115, 145, 155, 165, 175])), atol=1e-6)


def test_ties_keep_index_order():
    index = EmbeddingIndex(np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [2.0, 0.0]]), ["up", "x1", "x2", "x3"])
    [hits] = index.query(np.array([[1.0, 0.0]]), k=3)
    assert [k for k, _ in hits] == ["x1", "x2", "x3"]


def test_several_queries_at_once(fan):
    hits = fan.query(np.array([unit(0), unit(95), unit(-5)]), k=1)
    assert [row[0][0] for row in hits] == ["a0", "a90", "a0"]


def test_query_study_itself_is_excluded(fan):
    queries = np.array([unit(30), unit(30), unit(90)])
    with_self = fan.query(queries, k=2)
    assert with_self[0][0] == ("a30", pytest.approx(1.0, abs=1e-6))
    hits = fan.query(queries, k=2, exclude_keys=["a30", None, "a90"])
    assert [k for k, _ in hits[0]] == ["a10", "a60"]  # 20 and 30 deg away; a30 itself gone
    assert [k for k, _ in hits[1]] == ["a30", "a10"]  # no exclusion for this row
    assert [k for k, _ in hits[2]] == ["a60", "a30"]
    # a key not in the index (an incoming study) excludes nothing; a single key applies to all rows
    assert fan.query(np.array([unit(30)]), k=1, exclude_keys=["incoming.png"]) == [[("a30", pytest.approx(1.0, abs=1e-6))]]
    assert [r[0][0] for r in fan.query(np.array([unit(0), unit(2)]), k=1, exclude_keys="a0")] == ["a10", "a10"]


def test_k_larger_than_index(fan):
    [hits] = fan.query(np.array([unit(0)]), k=50)
    assert len(hits) == 6
    [hits] = fan.query(np.array([unit(0)]), k=50, exclude_keys=["a0"])
    assert len(hits) == 5 and "a0" not in dict(hits)
    assert fan.query(np.array([unit(0)]), k=0) == [[]]
    tiny = EmbeddingIndex(np.array([[1.0, 0.0]]), ["only"])
    assert tiny.query(np.array([[1.0, 0.0]]), k=3, exclude_keys=["only"]) == [[]]
    empty = EmbeddingIndex(np.zeros((0, 2)), [])
    assert empty.query(np.array([[1.0, 0.0]]), k=3) == [[]]


def test_bad_inputs(fan):
    with pytest.raises(ValueError):
        EmbeddingIndex(np.ones((3, 2)), ["a", "b"])
    with pytest.raises(ValueError):
        EmbeddingIndex(np.ones((2, 2)), ["a", "a"])
    with pytest.raises(ValueError):
        fan.query(np.ones((1, 3)), k=1)
    with pytest.raises(ValueError):
        fan.query(np.ones((2, 2)), k=1, exclude_keys=["a0"])
    with pytest.raises(ValueError):
        fan.query(np.ones((1, 2)), k=-1)


def test_zero_vector_has_cosine_zero():
    index = EmbeddingIndex(np.array([[0.0, 0.0], [1.0, 0.0]]), ["zero", "x"])
    [hits] = index.query(np.array([[0.0, 1.0]]), k=2)
    assert dict(hits) == {"zero": 0.0, "x": pytest.approx(0.0, abs=1e-7)}
    assert np.all(np.isfinite(l2_normalise(np.zeros((2, 3)))))


def test_matches_sklearn_cosine_similarity_top_k():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(500, 32)).astype(np.float32)
    queries = rng.normal(size=(40, 32)).astype(np.float32)
    keys = [f"s{i:03d}" for i in range(len(data))]
    index = EmbeddingIndex(data, keys)
    k = 7
    expected = cosine_similarity(queries, data)
    for row, sims in zip(index.query(queries, k), expected):
        order = np.argsort(-sims, kind="stable")[:k]
        assert [key for key, _ in row] == [keys[j] for j in order]
        np.testing.assert_allclose([c for _, c in row], sims[order], atol=1e-5)

    # queries that are stored studies, each excluding itself: its true nearest other study
    own = index.query(data[:25] * 3.0, k, exclude_keys=keys[:25])
    full = cosine_similarity(data[:25], data)
    for i, (row, sims) in enumerate(zip(own, full)):
        sims[i] = -np.inf
        order = np.argsort(-sims, kind="stable")[:k]
        assert [key for key, _ in row] == [keys[j] for j in order]


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    keys = [f"{i:08d}_000.png" for i in range(60)]
    index = EmbeddingIndex(rng.normal(size=(60, 16)), keys)
    path = tmp_path / "model" / "embeddings.npz"
    sha = index.save(path)
    loaded = EmbeddingIndex.load(path, sha)
    assert loaded.keys == keys
    np.testing.assert_array_equal(loaded.vectors, index.vectors)
    assert loaded.vectors.dtype == np.float32
    queries = rng.normal(size=(5, 16))
    assert loaded.query(queries, 4, exclude_keys=keys[:5]) == index.query(queries, 4, exclude_keys=keys[:5])
    with np.load(path, allow_pickle=False) as data:  # plain arrays, readable without pickle
        assert set(data.files) == {"keys", "vectors"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["embeddings.npz"]
    with pytest.raises(ArtifactIntegrityError):
        EmbeddingIndex.load(path, "0" * 64)
    with pytest.raises(FileNotFoundError):
        EmbeddingIndex.load(tmp_path / "missing.npz")


# --------------------------------------------------------------------------- the scoring report


def _scoring_context(top: dict) -> dict:
    return {"title": "Nightly scoring", "generated_at": "2025-01-02", "failures": [], "flags": [], "top_studies": top,
            "run": {"id": 1, "model_name": "m", "threshold_set_id": 2, "started_at": "a", "finished_at": "b",
                    "n_scored": 3, "n_skipped": 0, "n_failed": 0}}


def test_scoring_report_lists_similar_cases_escaped():
    from reports.render import render_scoring_html

    html = render_scoring_html(_scoring_context({
        "Effusion": [("new_001.png", 0.97, [("00000001_000.png", 0.9876, "Effusion|Mass"), ("<b>x</b>.png", 0.5, "<i>No</i>")]),
                     ("new_002.png", 0.91)],  # old two-element form still accepted
        "Mass": [("new_003.png", 0.8, [])],
    }))
    assert "00000001_000.png" in html and "cos 0.988" in html and "Effusion|Mass" in html
    assert "&lt;b&gt;x&lt;/b&gt;.png" in html and "&lt;i&gt;No&lt;/i&gt;" in html
    assert "<b>" not in html and "<i>" not in html
    assert html.count('<ul class="similar') == 1
    assert "most similar labelled studies" in html
    plain = render_scoring_html(_scoring_context({"Effusion": [("new_001.png", 0.97)]}))
    assert '<ul class="similar' not in plain and "most similar labelled studies" not in plain


# --------------------------------------------------------------------------- tasks on a real registry

IMAGE_SIZE = 32


def _image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:48]
    blob = 120 * np.exp(-((yy - rng.uniform(8, 40)) ** 2 + (xx - rng.uniform(8, 40)) ** 2) / rng.uniform(20, 200))
    return np.clip(60 + blob + rng.normal(0, 25, (48, 48)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A migrated SQLite registry: 24 labelled studies (one, ``dup.png``, a pixel copy of
    ``s00.png``; one quarantined), an incoming copy of ``s05.png``, and a champion network with
    random weights. ``build_model`` is served from one pre-built network (DenseNet's init alone
    takes seconds); the weights still come from the sha-checked artefact."""
    import torch
    from PIL import Image

    import tasks.models
    from cxrmodel.models.artifacts import save_state_dict
    from cxrmodel.findings import FINDINGS
    from cxrmodel.data.metadata import AgeScaler
    from db import repository as repo
    from db.engine import session_scope, upgrade_database
    from db.models import Study

    root = tmp_path_factory.mktemp("similar")
    url = f"sqlite:///{root / 'cxr.db'}"
    upgrade_database(url)
    images = {f"s{i:02d}.png": _image(i) for i in range(23)}
    images["dup.png"] = images["s00.png"]
    images["incoming.png"] = images["s05.png"]
    (root / "images").mkdir()
    for key, pixels in images.items():
        Image.fromarray(pixels).save(root / "images" / key)
    splits = ["train"] * 16 + ["val"] * 4 + ["test"] * 3
    records, labels = [], {}
    for i, key in enumerate(k for k in images if k != "incoming.png"):
        split = splits[i] if i < len(splits) else "test"
        records.append({"study_key": key, "patient_id": key[:3], "follow_up": 0, "age": 30.0 + i, "sex": "MF"[i % 2],
                        "view": "PA", "source": "synthetic", "split": split, "image_path": str(root / "images" / key),
                        "content_hash": None, "labelled": True})
        labels[key] = {f: int((i + j) % 5 == 0) for j, f in enumerate(FINDINGS)}
    records.append({"study_key": "incoming.png", "patient_id": None, "follow_up": None, "age": 50.0, "sex": "F",
                    "view": "PA", "source": "incoming", "split": None, "image_path": str(root / "images" / "incoming.png"),
                    "content_hash": None, "labelled": False})

    torch.manual_seed(0)
    template = tasks.models.build_model("densenet121_fpn").eval()
    home = root / "home"
    path = home / "models" / "net" / "model.safetensors"
    sha = save_state_dict(template.state_dict(), path)
    with session_scope(url) as s:
        repo.sync_studies(s, records, labels)
        s.query(Study).filter(Study.study_key == "s22.png").update({"status": "quarantined"})
        version = repo.register_model_version(
            s, name="net", kind="densenet121_fpn", artifact_path=str(path), sha256=sha, status="candidate",
            config={"image_size": IMAGE_SIZE, "age_scaler": AgeScaler.fit([30, 60]).to_dict()},
        )
        repo.promote(s, version.id, "test champion")
        version_id = version.id
    (path.parent / "config.json").write_text("{}")

    patch = pytest.MonkeyPatch()
    patch.setattr(tasks.models, "build_model", lambda kind, **kw: copy.deepcopy(template))
    yield {"url": url, "home": home, "version_id": version_id, "labels": labels, "root": root}
    patch.undo()


@pytest.fixture(scope="module")
def indexed(registry):
    from tasks.similarity import index_embeddings

    return Path(index_embeddings.fn(registry["url"], registry["home"], registry["version_id"]))


def test_index_embeddings_covers_active_labelled_studies(registry, indexed):
    import json

    from db.engine import session_scope
    from db.models import ModelVersion

    with session_scope(registry["url"]) as s:
        config = s.get(ModelVersion, registry["version_id"]).config
    assert config["embedding_index"] == str(indexed) and indexed.name == "embeddings.npz"
    assert indexed.parent == Path(registry["home"]) / "models" / "net"
    assert config["image_size"] == IMAGE_SIZE  # the rest of the config is kept
    assert json.loads((indexed.parent / "config.json").read_text())["embedding_index"] == str(indexed)
    index = EmbeddingIndex.load(indexed, config["embedding_index_sha256"])
    expected = {f"s{i:02d}.png" for i in range(22)} | {"dup.png"}  # not s22 (quarantined), not incoming
    assert set(index.keys) == expected and len(index) == config["embedding_index_size"] == 23
    assert index.dim == 256
    # a pixel copy embeds identically
    assert float(index.vector("s00.png") @ index.vector("dup.png")) == pytest.approx(1.0, abs=1e-5)


def test_similar_cases_for_labelled_and_incoming_studies(registry, indexed):
    from cxrmodel.findings import FINDINGS
    from tasks.similarity import embed_image_files, load_index, similar_cases

    url, home = registry["url"], registry["home"]
    hits = similar_cases.fn(url, home, "s00.png", k=4)
    assert len(hits) == 4
    assert hits[0]["study_key"] == "dup.png" and hits[0]["cosine"] == pytest.approx(1.0, abs=1e-4)
    assert "s00.png" not in [h["study_key"] for h in hits]
    assert [h["cosine"] for h in hits] == sorted((h["cosine"] for h in hits), reverse=True)
    for h in hits:
        assert h["findings"] == [f for f in FINDINGS if registry["labels"][h["study_key"]][f]]
        assert h["findings_text"] == ("|".join(h["findings"]) or "No Finding")

    # the query decoded from its file gives the same cosines as the cached pixels in the index
    loaded, index, _ = load_index(url)
    query = l2_normalise(embed_image_files(loaded, [str(registry["root"] / "images" / "s00.png")]))[0]
    for h in hits:
        assert h["cosine"] == pytest.approx(float(index.vector(h["study_key"]) @ query), abs=1e-5)

    incoming = similar_cases.fn(url, home, "incoming.png", k=2)
    assert incoming[0]["study_key"] == "s05.png" and incoming[0]["cosine"] == pytest.approx(1.0, abs=1e-4)

    everything = similar_cases.fn(url, home, "s03.png", k=100)
    assert len(everything) == 22 and "s03.png" not in {h["study_key"] for h in everything}

    with pytest.raises(ValueError, match="no study"):
        similar_cases.fn(url, home, "nope.png")


def test_scoring_report_helper_adds_three_similar_cases(registry, indexed):
    from tasks.reporting import _with_similar_cases

    top = {"Effusion": [("incoming.png", 0.9), ("s01.png", 0.7)], "Mass": []}
    out = _with_similar_cases(registry["url"], registry["version_id"], top)
    key, p, similar = out["Effusion"][0]
    assert (key, p) == ("incoming.png", 0.9) and len(similar) == 3
    assert similar[0][0] == "s05.png" and similar[0][1] == pytest.approx(1.0, abs=1e-4)
    assert all(isinstance(c[2], str) for c in similar)
    assert "s01.png" not in [c[0] for c in out["Effusion"][1][2]]
    assert out["Mass"] == []


def test_embedding_baselines_ride_on_the_parent_network(registry, indexed):
    from cxrmodel.models.embedding import NEIGHBOUR_GRID, KnnEmbeddingModel, MlpEmbeddingModel
    from db.engine import session_scope
    from db.models import ModelVersion
    from tasks.common import labelled_frame
    from tasks.models import load_model_version
    from tasks.reporting import _with_similar_cases
    from tasks.similarity import load_index
    from tasks.training import train_knn_baseline, train_mlp_baseline

    url, home = registry["url"], registry["home"]
    mlp_id = train_mlp_baseline.fn(url, home, registry["version_id"])
    knn_id = train_knn_baseline.fn(url, home, registry["version_id"])
    frame = labelled_frame(url)
    with session_scope(url) as s:
        mlp_v, knn_v = s.get(ModelVersion, mlp_id), s.get(ModelVersion, knn_id)
        parent = s.get(ModelVersion, registry["version_id"])
        assert (mlp_v.kind, mlp_v.parent_id, Path(mlp_v.artifact_path).name) == ("mlp_embedding", parent.id, "mlp.safetensors")
        assert (knn_v.kind, knn_v.parent_id) == ("knn_embedding", parent.id)
        assert mlp_v.config["embedding_dim"] == 256 and mlp_v.parameter_count == 256 * 128 + 128 + 128 * 14 + 14
        mlp = load_model_version(mlp_v, parent)
        knn = load_model_version(knn_v, parent)
    assert isinstance(mlp.embedding_head, MlpEmbeddingModel) and isinstance(knn.embedding_head, KnnEmbeddingModel)
    assert knn.knn is knn.embedding_head  # the old attribute name still answers
    assert knn.embedding_head.n_neighbors in NEIGHBOUR_GRID
    probs = mlp.predict_frame(frame, Path(home) / "cache")
    assert probs.shape == (len(frame), 14) and np.all((probs >= 0) & (probs <= 1))
    assert knn.predict_frame(frame, Path(home) / "cache").shape == (len(frame), 14)

    # a baseline version uses its parent network's index
    _, index, name = load_index(url, mlp_id)
    assert name == "net" and len(index) == 23
    assert len(_with_similar_cases(url, mlp_id, {"Mass": [("s02.png", 0.5)]})["Mass"][0][2]) == 3


def test_similar_cases_without_index_fail_clearly_and_report_degrades(registry, tmp_path):
    import torch

    from cxrmodel.models.artifacts import save_state_dict
    from db import repository as repo
    from db.engine import session_scope
    from tasks.reporting import _with_similar_cases
    from tasks.similarity import load_index

    path = tmp_path / "m.safetensors"
    sha = save_state_dict({"w": torch.zeros(1)}, path)
    with session_scope(registry["url"]) as s:
        other = repo.register_model_version(s, name="no-index", kind="densenet121_fpn", config={}, artifact_path=str(path), sha256=sha)
        other_id = other.id
    with pytest.raises(RuntimeError, match="no embedding index"):
        load_index(registry["url"], other_id)
    top = {"Mass": [("s02.png", 0.5)]}
    assert _with_similar_cases(registry["url"], other_id, top) == top
