"""The PACS round trip: pull + score + write-back of N studies from a local Orthanc (QIDO-RS,
WADO-RS, decode, store, register, score, SR build, STOW-RS, every step recorded in SQLite),
against two references measured in the same run on the same studies: the bare WADO-RS
retrieval of the same instances (one client, no checks, nothing written) and the bare model
forward over the same images already decoded to tensors (same batch size and input size).

The figures are ratios: round trip / (bare retrieval + bare forward) says what the link's
bookkeeping (metadata, checks, content store, database rows, SR building, STOW-RS) costs on top
of moving the pixels and running the network. A random-weight ``densenet121_fpn`` is the
champion (speed does not depend on the weights).

Needs Orthanc and its DICOMweb plugin (``apt-get install orthanc orthanc-dicomweb``); without
them it says so and reports nothing. Environment: ``CXR_BENCH_PACS_STUDIES`` (default 200),
``CXR_BENCH_PACS_SIZE`` (model input, default 224).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the Orthanc launcher and test radiographs of the PACS tests
from bench.common import emit  # noqa: E402

N_STUDIES = int(os.environ.get("CXR_BENCH_PACS_STUDIES", "200"))
SIZE = int(os.environ.get("CXR_BENCH_PACS_SIZE", "224"))
BATCH = 64


def _register_champion(url: str, root: Path) -> None:
    import torch

    from cxrmodel.findings import FINDINGS
    from cxrmodel.models.artifacts import save_state_dict
    from cxrmodel.models.networks import densenet121_fpn
    from db import registry, thresholds
    from db.engine import session_scope, upgrade_database

    upgrade_database(url)
    torch.manual_seed(0)
    artifact = root / "random-fpn.safetensors"
    sha256 = save_state_dict(densenet121_fpn().state_dict(), artifact)
    scaler = {"min_age": 0, "max_age": 100, "median_age": 50}
    with session_scope(url) as session:
        version = registry.register_model_version(
            session,
            name="bench-random-fpn",
            kind="densenet121_fpn",
            config={"image_size": SIZE, "age_scaler": scaler, "architecture": "densenet121_fpn"},
            artifact_path=str(artifact),
            sha256=sha256,
        )
        thresholds.save_threshold_set(session, version.id, "fixed", {"value": 0.5}, {f: 0.5 for f in FINDINGS}, {})
        registry.promote(session, version.id, "PACS round-trip bench (random weights)")


def main() -> int:
    from pacs_fixtures import PASSWORD, USER, OrthancServer, nih_image, orthanc_missing, radiograph

    missing = orthanc_missing()
    if missing:
        print(f"skipped: {missing}")
        return 0
    import numpy as np
    import torch
    from conftest import free_port

    from cxrmodel.data.transforms import eval_transform
    from cxrmodel.inference import ScoringDataset, ScoringItem
    from cxrmodel.models.loading import load_model_version
    from cxrmodel.pacs.dicomweb import Pacs, PacsConnection
    from db import pacs as pacs_store
    from db import registry
    from db import scoring as scoring_store
    from db.engine import session_scope
    from tasks.pacs import pull_from_pacs, push_to_pacs
    from tasks.scoring import run_scoring

    work = Path(tempfile.mkdtemp(prefix="cxr-bench-pacs-"))
    server = OrthancServer(free_port(), work / "orthanc")
    server.folder.mkdir()
    server.start()
    try:
        rng = np.random.default_rng(0)
        base = nih_image("00000001_000.png", 512)
        datasets = [
            radiograph(
                np.clip(base.astype(np.int16) + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8),
                modality="CR" if i % 2 else "DX",
                view="PA" if i % 3 else "AP",
                accession=f"B{i:06d}",
                patient=f"B{i:05d}",
                study_date=date.today(),
            )
            for i in range(N_STUDIES)
        ]
        server.upload(datasets)
        url = f"sqlite:///{work / 'bench.db'}"
        _register_champion(url, work)
        os.environ.update(
            {
                "CXR_HOME": str(work / "home"),
                "CXR_DICOMWEB_URL": server.dicomweb,
                "CXR_DICOMWEB_USER": USER,
                "CXR_DICOMWEB_PASSWORD": PASSWORD,
            }
        )
        print(f"{N_STUDIES} studies 512x512 8-bit in Orthanc, model input {SIZE}px, torch threads {torch.get_num_threads()}")

        t0 = time.perf_counter()
        pulled = pull_from_pacs.fn(database_url=url)
        t1 = time.perf_counter()
        run_scoring(url, batch_size=BATCH, device="cpu")
        t2 = time.perf_counter()
        pushed = push_to_pacs.fn(database_url=url)
        t3 = time.perf_counter()
        assert pulled.registered == N_STUDIES and pushed.sent == N_STUDIES, (pulled, pushed)
        round_trip = t3 - t0

        pacs = Pacs(PacsConnection(server.dicomweb, USER, PASSWORD))
        t = time.perf_counter()
        for ds in datasets:
            pacs.retrieve_instance_bytes(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        bare_wado = time.perf_counter() - t
        pacs.close()

        with session_scope(url) as session:
            champion = registry.champion(session)
            files = registry.model_version_files(session, champion.id)
            ids = [row["study_id"] for row in pacs_store.instance_rows(session)]
            studies = scoring_store.studies_by_id(session, ids)
        loaded = load_model_version(files)
        items = [ScoringItem(s.id, s.image_path, (0.5, 0.0, 0.0)) for s in studies]
        decoded = ScoringDataset(items, SIZE, eval_transform(SIZE))
        tensors = torch.stack([decoded[i][0] for i in range(len(items))])
        patient = torch.tensor([[0.5, 0.0, 0.0]] * len(items))
        model = loaded.network.eval()
        with torch.no_grad():
            model(tensors[:BATCH], patient[:BATCH])  # warm-up
            t = time.perf_counter()
            for start in range(0, len(items), BATCH):
                model(tensors[start : start + BATCH], patient[start : start + BATCH])
            bare_forward = time.perf_counter() - t

        print(
            f"round trip {round_trip:.1f} s (pull {t1 - t0:.1f}, score {t2 - t1:.1f}, write-back {t3 - t2:.1f}); "
            f"bare WADO-RS {bare_wado:.1f} s; bare forward {bare_forward:.1f} s"
        )
        reference = f"{N_STUDIES} studies, {SIZE}px, same run"
        emit("PACS round trip / (bare WADO-RS + bare forward)", round_trip / (bare_wado + bare_forward), "x", reference)
        emit("PACS pull / bare WADO-RS retrieval", (t1 - t0) / bare_wado, "x", reference)
        emit("PACS scoring step / bare model forward", (t2 - t1) / bare_forward, "x", reference)
        emit("PACS round trip seconds per study", round_trip / N_STUDIES, "s", reference)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
