"""Similar-case retrieval: an embedding index of the labelled studies per network, and lookups
of the labelled studies most similar to any study (labelled or incoming).

The embeddings and the index are :mod:`cxrmodel` (:func:`cxrmodel.models.loading.embed_image_files`,
:class:`cxrmodel.explain.similarity.EmbeddingIndex`); which network's index serves a version,
and the labels of the hits, come from :mod:`db.registry` and :mod:`db.studies`.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task

from cxrmodel.data.metadata import labels_matrix
from cxrmodel.explain.similarity import EmbeddingIndex, build_retrieval_index
from cxrmodel.findings import format_finding_labels
from cxrmodel.layout import HomeLayout
from cxrmodel.models.kinds import NETWORK_KINDS
from cxrmodel.models.loading import LoadedModel, embed_image_files, load_model_version
from db import registry, studies
from db.engine import session_scope
from tasks.common import labelled_frame, run_logger

__all__ = ["INDEX_FILE", "embed_image_files", "index_embeddings", "load_index", "similar_cases", "similar_to"]

INDEX_FILE = "embeddings.npz"


@task(name="index-embeddings")
def index_embeddings(database_url: str, home: Path, version_id: int) -> str:
    """Embed every active labelled study (train, val and test) with the network of ``version_id``
    through the image cache, whitened by a transform fitted on the training split
    (:func:`cxrmodel.explain.similarity.build_retrieval_index`); save ``embeddings.npz`` beside
    the model and record its path, sha256 and leave-one-out precision@5 (with the random and
    prevalence baselines) in the version's config. Returns the index path."""
    with session_scope(database_url) as session:
        version = registry.model_version(session, version_id)
    if version.kind not in NETWORK_KINDS:
        raise ValueError(f"model version {version.name} is a {version.kind}, not a network: index its parent instead")
    loaded = load_model_version(version.files())
    frame = labelled_frame(database_url)
    embeddings = loaded.embed_frame(frame, HomeLayout(Path(home)).cache)
    path = Path(version.artifact_path).parent / INDEX_FILE
    index, quality = build_retrieval_index(
        embeddings, frame["study_key"].tolist(), labels_matrix(frame), (frame["split"] == "train").to_numpy()
    )
    sha = index.save(path)
    retrieval = quality.as_config() if quality is not None else {}
    with session_scope(database_url) as session:
        updated = registry.update_model_config(
            session,
            version_id,
            embedding_index=str(path),
            embedding_index_sha256=sha,
            embedding_index_size=int(len(frame)),
            embedding_index_whitened=True,
            **retrieval,
        )
    config_file = path.parent / "config.json"
    if config_file.is_file():
        config_file.write_text(json.dumps(updated.config, indent=2))
    run_logger().info("embedding index of %d labelled studies (%d dims, whitened): %s", len(frame), embeddings.shape[1], path)
    if quality is not None:
        run_logger().info(
            "retrieval precision@%d (leave-one-out) %.3f; random %.3f, prevalence list %.3f",
            quality.k,
            quality.precision,
            quality.random,
            quality.prevalence,
        )
    return str(path)


def load_index(database_url: str, version_id: int | None = None) -> tuple[LoadedModel, EmbeddingIndex, str]:
    """(network, its embedding index, network version name) of model version ``version_id``
    (default: the current champion); an embedding baseline uses its parent network's index."""
    with session_scope(database_url) as session:
        network = registry.indexed_network(session, version_id)
    index = EmbeddingIndex.load(network.config["embedding_index"], network.config.get("embedding_index_sha256"))
    return load_model_version(network.files()), index, network.name


def similar_to(
    database_url: str, loaded: LoadedModel, index: EmbeddingIndex, study_images: dict[str, str], k: int = 5
) -> dict[str, list[dict]]:
    """For each ``study_key -> image_path`` the ``k`` most similar labelled, active studies of
    ``index`` (the study itself excluded), as dicts ``study_key, cosine, findings (list),
    findings_text, split``, most similar first."""
    if not study_images:
        return {}
    keys = list(study_images)
    vectors = embed_image_files(loaded, [study_images[key] for key in keys])
    # Ask for a few extra: entries of studies quarantined since the index was built are dropped.
    want = min(len(index), 2 * k + 10)
    while True:
        hits = index.query(vectors, want, exclude_keys=keys)
        with session_scope(database_url) as session:
            info = studies.active_labelled_findings(session, {key for row in hits for key, _ in row})
        out = {}
        for key, row in zip(keys, hits, strict=True):
            kept = [(hit, cos) for hit, cos in row if hit in info][:k]
            out[key] = [
                {
                    "study_key": hit,
                    "cosine": cos,
                    "findings": info[hit][0],
                    "findings_text": format_finding_labels(info[hit][0]),
                    "split": info[hit][1],
                }
                for hit, cos in kept
            ]
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
        path = studies.image_paths(session, [study_key]).get(study_key)
    if path is None:
        raise ValueError(f"no study with key {study_key!r}")
    loaded, index, name = load_index(database_url)
    result = similar_to(database_url, loaded, index, {study_key: path}, k)[study_key]
    run_logger().info("%d studies similar to %s in the embedding space of %s", len(result), study_key, name)
    return result
