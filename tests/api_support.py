"""A registry with a tiny champion for the on-demand service's tests and benchmark, built in
seconds: labelled synthetic studies on disk, a DenseNet121-FPN with seeded random weights (its
artefact sha-checked like any other), an active threshold set, a test evaluation, an embedding
index of the labelled studies, promoted to champion. And a real ``uvicorn`` process serving
:func:`api.app.create_app` on a free local port."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
API_KEY = "test-key-7c1f0a9e"


def phantom_png(path: Path, seed: int, size: int = 256, findings: frozenset = frozenset()) -> Path:
    """A synthetic radiograph (the demo's phantoms) written as an 8-bit PNG."""
    from PIL import Image

    from cxrmodel.data.synth.phantom import render_phantom, sample_anatomy

    rng = np.random.default_rng(seed)
    Image.fromarray(render_phantom(findings, sample_anatomy(rng), rng, size=size)).save(path)
    return path


@dataclass
class Registry:
    url: str
    home: Path
    images: Path
    champion_id: int
    labelled_keys: list[str]


def _network(seed: int):
    import torch

    from cxrmodel.models.networks import build_model

    torch.manual_seed(seed)
    return build_model("densenet121_fpn").eval()


def register_network(
    url: str,
    home: Path,
    name: str,
    seed: int,
    image_size: int,
    threshold: float,
    *,
    index_of=(),
    tta_hflip: bool = False,
    promote: bool = True,
) -> int:
    """Register a DenseNet121-FPN with seeded random weights (its recipe flip-averaging when
    ``tta_hflip``), an active threshold set (every finding at ``threshold``) and a test
    evaluation, and promote it (unless not ``promote``); with ``index_of`` (study key, image path pairs) its embedding
    index too. Returns its version id."""
    from cxrmodel.data.metadata import AgeScaler
    from cxrmodel.explain.similarity import EmbeddingIndex
    from cxrmodel.models.artifacts import save_state_dict
    from cxrmodel.models.loading import ModelVersionFiles, embed_image_files, load_model_version
    from db import registry
    from db.engine import session_scope

    folder = home / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    artifact = folder / "model.safetensors"
    sha = save_state_dict(_network(seed).state_dict(), artifact)
    config = {"image_size": image_size, "age_scaler": AgeScaler.fit([20, 90]).to_dict(), "architecture": "densenet121_fpn"}
    if tta_hflip:
        config["train"] = {"tta_hflip": True}
    version = _register_evaluated(url, name, "densenet121_fpn", config, artifact, sha, threshold)
    if index_of:
        keys = [k for k, _ in index_of]
        loaded = load_model_version(ModelVersionFiles(version.id, name, "densenet121_fpn", str(artifact), sha, config))
        path = folder / "embeddings.npz"
        index_sha = EmbeddingIndex(embed_image_files(loaded, [p for _, p in index_of]), keys).save(path)
        with session_scope(url) as s:
            registry.update_model_config(s, version.id, embedding_index=str(path), embedding_index_sha256=index_sha)
    if promote:
        with session_scope(url) as s:
            registry.promote(s, version.id, "test champion")
    return version.id


def register_pixel_logistic(url: str, home: Path, name: str, image_paths: list[str], image_size: int, threshold: float) -> int:
    """Register and promote a classical pixel-logistic model fitted on the phantoms at
    ``image_paths`` (every other one an Effusion, as :func:`build_registry` labels them), with
    an active threshold set and a test evaluation. Returns its version id."""
    from cxrmodel.data.imaging import read_grayscale, resize_square
    from cxrmodel.data.metadata import AgeScaler
    from cxrmodel.findings import FINDINGS
    from cxrmodel.models.classical import PixelLogisticModel
    from db import registry
    from db.engine import session_scope

    images = np.stack([resize_square(read_grayscale(Path(p)), image_size) for p in image_paths])
    patient = np.tile(np.float32([0.5, 1.0, 0.0]), (len(images), 1))
    labels = np.zeros((len(images), len(FINDINGS)), dtype=int)
    labels[1::2, FINDINGS.index("Effusion")] = 1
    folder = home / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    artifact = folder / "model.npz"
    sha = PixelLogisticModel.fit(images, patient, labels, side=8).save(artifact)
    config = {"image_size": image_size, "age_scaler": AgeScaler.fit([20, 90]).to_dict()}
    version = _register_evaluated(url, name, "pixel_logistic", config, artifact, sha, threshold)
    with session_scope(url) as s:
        registry.promote(s, version.id, "test champion")
    return version.id


def _register_evaluated(url: str, name: str, kind: str, config: dict, artifact: Path, sha: str, threshold: float):
    from cxrmodel.findings import FINDINGS
    from db import evaluations, registry, thresholds
    from db.engine import session_scope

    with session_scope(url) as s:
        version = registry.register_model_version(s, name=name, kind=kind, config=config, artifact_path=str(artifact), sha256=sha)
        tset = thresholds.save_threshold_set(s, version.id, "fixed", {}, dict.fromkeys(FINDINGS, threshold), {})
        aggregates = dict(
            n_studies=10, macro_auroc=0.61, micro_auroc=0.63, macro_f1=0.3, micro_f1=0.31, macro_precision=0.3,
            micro_precision=0.3, macro_recall=0.3, micro_recall=0.3, exact_match=0.1, hamming_loss=0.2,
            accuracy=0.8, mean_brier=0.15, macro_auroc_ci_low=0.55, macro_auroc_ci_high=0.67,
        )  # fmt: skip
        evaluations.save_evaluation(s, version.id, tset.id, "test", aggregates, [])
    return version


def build_registry(work: Path, url: str | None = None, image_size: int = 64, n_labelled: int = 8) -> Registry:
    """A migrated database (SQLite in ``work`` unless ``url``) with ``n_labelled`` labelled
    phantom studies (every other one with an Effusion) and a champion indexing them."""
    from cxrmodel.findings import FINDINGS
    from cxrmodel.io import sha256_file
    from db.engine import session_scope, upgrade_database
    from db.studies import sync_studies

    home, images = work / "home", work / "images"
    images.mkdir(parents=True, exist_ok=True)
    url = url or f"sqlite:///{work / 'cxr.db'}"
    upgrade_database(url)
    records, labels, pairs = [], {}, []
    for i in range(n_labelled):
        key = f"{i + 1:08d}_000.png"
        findings = frozenset({"Effusion"}) if i % 2 else frozenset()
        path = phantom_png(images / key, seed=100 + i, findings=findings)
        records.append(
            dict(study_key=key, patient_id=str(i + 1), follow_up=0, age=40.0 + i, sex="MF"[i % 2], view="PA",
                 source="synthetic", split="train", image_path=str(path), content_hash=sha256_file(path), labelled=True)
        )  # fmt: skip
        labels[key] = {f: int(f in findings) for f in FINDINGS}
        pairs.append((key, str(path)))
    with session_scope(url) as s:
        sync_studies(s, records, labels)
    champion_id = register_network(url, home, "net-a", seed=0, image_size=image_size, threshold=0.5, index_of=pairs)
    return Registry(url, home, images, champion_id, [k for k, _ in pairs])


def server_env(registry: Registry, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(
        {
            "CXR_HOME": str(registry.home),
            "CXR_DATABASE_URL": registry.url,
            "CXR_API_KEYS": f"other-key,{API_KEY}",
            "CXR_API_CHAMPION_TTL_S": "0.2",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            **settings,
        }
    )
    return env


def uvicorn_args(port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "api.app:app_from_environment", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--no-server-header", "--log-level", "info",
    ]  # fmt: skip
