"""Similar-case retrieval: an embedding index of the labelled studies per network, and lookups
of the labelled studies most similar to any study (labelled or incoming)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from prefect import task
from sqlalchemy import select

from cxrmodel.findings import FINDINGS, format_finding_labels
from cxrmodel.data.imaging import read_grayscale, resize_square
from cxrmodel.explain.similarity import EmbeddingIndex
from cxrmodel.training.loop import resolve_device
from cxrmodel.data.transforms import eval_transform
from db import repository as repo
from db.engine import session_scope
from db.models import ModelVersion, Study
from tasks.common import labelled_frame, run_logger
from tasks.models import NETWORK_KINDS, LoadedModel, load_model_version

INDEX_FILE = "embeddings.npz"


@task(name="index-embeddings")
def index_embeddings(database_url: str, home: Path, version_id: int) -> str:
    """Embed every active labelled study (train, val and test) with the network of ``version_id``
    through the image cache; save ``embeddings.npz`` beside the model and record its path (and
    sha256) in the version's config. Returns the index path."""
    with session_scope(database_url) as session:
        version = session.get(ModelVersion, version_id)
        if version is None:
            raise ValueError(f"no model version with id {version_id}")
        if version.kind not in NETWORK_KINDS:
            raise ValueError(f"model version {version.name} is a {version.kind}, not a network: index its parent instead")
        loaded = load_model_version(version)
        folder = Path(version.artifact_path).parent
    frame = labelled_frame(database_url)
    embeddings = loaded.embed_frame(frame, Path(home) / "cache")
    path = folder / INDEX_FILE
    sha = EmbeddingIndex(embeddings, frame["study_key"].tolist()).save(path)
    with session_scope(database_url) as session:
        version = session.get(ModelVersion, version_id)
        # A new dict: SQLAlchemy's JSON column does not notice in-place changes.
        version.config = {**(version.config or {}), "embedding_index": str(path), "embedding_index_sha256": sha,
                          "embedding_index_size": int(len(frame))}
        config = version.config
    config_file = folder / "config.json"
    if config_file.is_file():
        config_file.write_text(json.dumps(config, indent=2))
    run_logger().info("embedding index of %d labelled studies (%d dims): %s", len(frame), embeddings.shape[1], path)
    return str(path)


def _indexed_network(session, version: ModelVersion) -> ModelVersion:
    """``version`` when it has an embedding index, else its parent network's (embedding
    baselines share their parent's embedding space)."""
    if (version.config or {}).get("embedding_index"):
        return version
    if version.parent_id:
        parent = session.get(ModelVersion, version.parent_id)
        if parent is not None and (parent.config or {}).get("embedding_index"):
            return parent
    raise RuntimeError(f"model version {version.name} has no embedding index: run the train flow (index-embeddings) for it")


def load_index(database_url: str, version_id: int | None = None) -> tuple[LoadedModel, EmbeddingIndex, str]:
    """(network, its embedding index, network version name) of model version ``version_id``
    (default: the current champion); an embedding baseline uses its parent network's index."""
    with session_scope(database_url) as session:
        version = repo.champion(session) if version_id is None else session.get(ModelVersion, version_id)
        if version is None:
            raise RuntimeError("no champion model version: train, evaluate and promote one first" if version_id is None
                               else f"no model version with id {version_id}")
        network = _indexed_network(session, version)
        loaded = load_model_version(network)
        config = dict(network.config)
        name = network.name
    index = EmbeddingIndex.load(config["embedding_index"], config.get("embedding_index_sha256"))
    return loaded, index, name


@torch.no_grad()
def embed_image_files(loaded: LoadedModel, paths: list[str], batch_size: int = 32, device: str = "auto") -> np.ndarray:
    """Embeddings ``[N, d]`` of image files decoded from source (read_grayscale, resize_square,
    eval_transform): the same pixels the image cache would hold. Raises ImageDecodeError."""
    dev = resolve_device(device)
    network = loaded.network.eval().to(dev)
    transform = eval_transform(loaded.image_size)
    chunks = []
    for start in range(0, len(paths), batch_size):
        images = [transform(torch.from_numpy(resize_square(read_grayscale(p), loaded.image_size))[None])
                  for p in paths[start : start + batch_size]]
        chunks.append(network.embed(torch.stack(images).to(dev)).float().cpu())
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), dtype=np.float32)


def _labelled_findings(session, keys: list[str]) -> dict[str, dict]:
    """study key -> {"findings": [...], "split": ...} for active labelled studies among ``keys``."""
    rows = session.execute(
        select(Study.id, Study.study_key, Study.split)
        .where(Study.study_key.in_(keys), Study.labelled.is_(True), Study.status == "active")
    ).all()
    labels = repo.label_table(session, [r.id for r in rows])
    return {
        r.study_key: {"findings": [f for f in FINDINGS if labels.get(r.id, {}).get(f)], "split": r.split}
        for r in rows
    }


def similar_to(
    database_url: str, loaded: LoadedModel, index: EmbeddingIndex, studies: dict[str, str], k: int = 5
) -> dict[str, list[dict]]:
    """For each ``study_key -> image_path`` the ``k`` most similar labelled, active studies of
    ``index`` (the study itself excluded), as dicts ``study_key, cosine, findings (list),
    findings_text, split``, most similar first."""
    if not studies:
        return {}
    keys = list(studies)
    vectors = embed_image_files(loaded, [studies[key] for key in keys])
    # Ask for a few extra: entries of studies quarantined since the index was built are dropped.
    want = min(len(index), 2 * k + 10)
    while True:
        hits = index.query(vectors, want, exclude_keys=keys)
        with session_scope(database_url) as session:
            info = _labelled_findings(session, sorted({key for row in hits for key, _ in row}))
        out = {}
        for key, row in zip(keys, hits):
            kept = [(hit, cos) for hit, cos in row if hit in info][:k]
            out[key] = [{"study_key": hit, "cosine": cos, "findings": info[hit]["findings"],
                         "findings_text": format_finding_labels(info[hit]["findings"]), "split": info[hit]["split"]}
                        for hit, cos in kept]
        if want >= len(index) or all(len(v) >= k for v in out.values()):
            return out
        want = len(index)


@task(name="similar-cases")
def similar_cases(database_url: str, home: Path, study_key: str, k: int = 5) -> list[dict]:
    """The ``k`` labelled studies most similar to ``study_key`` (labelled or incoming) in the
    champion network's embedding space, with cosine similarity and positive findings."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    with session_scope(database_url) as session:
        path = session.scalar(select(Study.image_path).where(Study.study_key == study_key))
    if path is None:
        raise ValueError(f"no study with key {study_key!r}")
    loaded, index, name = load_index(database_url)
    result = similar_to(database_url, loaded, index, {study_key: path}, k)[study_key]
    run_logger().info("%d studies similar to %s in the embedding space of %s", len(result), study_key, name)
    return result
