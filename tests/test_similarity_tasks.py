"""Similar-case retrieval through the tasks, against a real (SQLite) registry: the embedding
index of a trained network, lookups for labelled and incoming studies, embedding baselines on
their parent's index, and a report that degrades without an index."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from cxrmodel.explain.similarity import EmbeddingIndex

pytestmark = pytest.mark.usefixtures("one_torch_thread")

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

    import cxrmodel.models.loading
    from cxrmodel.data.metadata import AgeScaler
    from cxrmodel.findings import FINDINGS
    from cxrmodel.models.artifacts import save_state_dict
    from db.engine import session_scope, upgrade_database
    from db.models import Study
    from db.registry import promote, register_model_version
    from db.studies import sync_studies

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
        records.append(
            {
                "study_key": key,
                "patient_id": key[:3],
                "follow_up": 0,
                "age": 30.0 + i,
                "sex": "MF"[i % 2],
                "view": "PA",
                "source": "synthetic",
                "split": split,
                "image_path": str(root / "images" / key),
                "content_hash": None,
                "labelled": True,
            }
        )
        labels[key] = {f: int((i + j) % 5 == 0) for j, f in enumerate(FINDINGS)}
    records.append(
        {
            "study_key": "incoming.png",
            "patient_id": None,
            "follow_up": None,
            "age": 50.0,
            "sex": "F",
            "view": "PA",
            "source": "incoming",
            "split": None,
            "image_path": str(root / "images" / "incoming.png"),
            "content_hash": None,
            "labelled": False,
        }
    )

    torch.manual_seed(0)
    template = cxrmodel.models.loading.build_model("densenet121_fpn").eval()
    home = root / "home"
    path = home / "models" / "net" / "model.safetensors"
    sha = save_state_dict(template.state_dict(), path)
    with session_scope(url) as s:
        sync_studies(s, records, labels)
        s.query(Study).filter(Study.study_key == "s22.png").update({"status": "quarantined"})
        version = register_model_version(
            s,
            name="net",
            kind="densenet121_fpn",
            artifact_path=str(path),
            sha256=sha,
            status="candidate",
            config={"image_size": IMAGE_SIZE, "age_scaler": AgeScaler.fit([30, 60]).to_dict()},
        )
        promote(s, version.id, "test champion")
        version_id = version.id
    (path.parent / "config.json").write_text("{}")

    patch = pytest.MonkeyPatch()
    patch.setattr(cxrmodel.models.loading, "build_model", lambda kind, **kw: copy.deepcopy(template))
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

    # whitened, with its leave-one-out precision@5 and the baselines stored for the scoring report
    from cxrmodel.data.metadata import labels_matrix
    from cxrmodel.explain.retrieval import precision_at_k, random_precision_at_k
    from tasks.common import labelled_frame
    from tasks.reporting import _retrieval_note

    assert index.whitening is not None and config["embedding_index_whitened"] is True
    frame = labelled_frame(registry["url"]).set_index("study_key").loc[index.keys]
    labels = labels_matrix(frame)
    assert config["retrieval_precision_at_k"] == pytest.approx(precision_at_k(index.vectors, labels, 5), abs=1e-4)
    assert config["retrieval_random_precision_at_k"] == pytest.approx(random_precision_at_k(labels), abs=1e-4)
    assert config["retrieval_k"] == 5 and config["retrieval_n"] == 23
    note = _retrieval_note(registry["url"], registry["version_id"])
    assert note == {"k": 5, "precision": config["retrieval_precision_at_k"], "random": config["retrieval_random_precision_at_k"],
                    "prevalence": config["retrieval_prevalence_precision_at_k"], "n": 23}  # fmt: skip


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
    query = index.encode(embed_image_files(loaded, [str(registry["root"] / "images" / "s00.png")]))[0]
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
    from cxrmodel.models.loading import ModelVersionFiles, load_model_version
    from db.engine import session_scope
    from db.models import ModelVersion
    from tasks.common import labelled_frame
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
        mlp = load_model_version(ModelVersionFiles.of(mlp_v, parent))
        knn = load_model_version(ModelVersionFiles.of(knn_v, parent))
    assert isinstance(mlp.embedding_head, MlpEmbeddingModel) and isinstance(knn.embedding_head, KnnEmbeddingModel)
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
    from db.engine import session_scope
    from db.registry import register_model_version
    from tasks.reporting import _with_similar_cases
    from tasks.similarity import load_index

    path = tmp_path / "m.safetensors"
    sha = save_state_dict({"w": torch.zeros(1)}, path)
    with session_scope(registry["url"]) as s:
        other = register_model_version(s, name="no-index", kind="densenet121_fpn", config={}, artifact_path=str(path), sha256=sha)
        other_id = other.id
    with pytest.raises(RuntimeError, match="no embedding index"):
        load_index(registry["url"], other_id)
    top = {"Mass": [("s02.png", 0.5)]}
    assert _with_similar_cases(registry["url"], other_id, top) == top
