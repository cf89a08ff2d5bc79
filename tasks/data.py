"""Data tasks: synthesise, ingest labelled metadata, fill the image cache, register incoming studies."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import task

from cxrmodel.data.cache import ImageCache
from cxrmodel.config import DataConfig, HubConfig, SynthConfig
from cxrmodel.data.hub import HubSource, fetch_dataset
from cxrmodel.findings import FINDINGS
from cxrmodel.data.imaging import ImageDecodeError, is_plain_file_name, read_dicom_metadata
from cxrmodel.io import sha256_file
from cxrmodel.data.metadata import locate_images, read_nih_metadata
from cxrmodel.data.sidecar import read_sidecar
from cxrmodel.data.splits import assert_no_patient_leak, assign_splits, read_official_lists
from cxrmodel.data.synth import generate_dataset
from db import repository as repo
from db.engine import session_scope
from db.models import Study
from tasks.common import DB_RETRIES, run_logger

METADATA_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
INCOMING_SUFFIXES = {".png", ".dcm", ".jpg", ".jpeg"}


@task(name="generate-synthetic-dataset")
def generate_synthetic(root: Path, synth: SynthConfig) -> dict:
    """Write (or rewrite identically) the synthetic NIH-layout dataset."""
    summary = generate_dataset(root, synth)
    run_logger().info(
        "synthetic dataset: %d studies of %d patients, %d incoming, %d healthy",
        summary.n_studies, summary.n_patients, summary.n_incoming, summary.n_no_finding,
    )
    out = asdict(summary)
    out["root"] = str(summary.root)
    return out


def find_metadata_file(root: Path) -> Path:
    for name in METADATA_NAMES:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"no {' or '.join(METADATA_NAMES)} in {root}")


class MissingInputError(FileNotFoundError):
    """A folder or file the run was told to read is not there: the user's to fix, never retried."""


def require_folder(path: str | Path, what: str) -> Path:
    """``path`` resolved, or :class:`MissingInputError` naming ``what`` when it is not a folder."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise MissingInputError(f"{what} {folder} does not exist or is not a folder")
    return folder.resolve()


@task(name="ingest-labelled-studies", **DB_RETRIES)
def ingest_labelled(database_url: str, root: Path, source: str, data: DataConfig, refresh_run_id: int) -> dict:
    """Parse the NIH metadata, quarantine bad rows, assign patient-level splits, upsert studies."""
    logger = run_logger()
    root = Path(root).resolve()
    parsed = read_nih_metadata(find_metadata_file(root))
    frame = parsed.studies
    quarantine = [
        {"row_key": q.row_key or f"line {q.row_number}", "row_number": q.row_number, "reason": q.reason, "raw": q.raw}
        for q in parsed.quarantined
    ]
    located = locate_images(root, frame["study_key"])
    missing = ~frame["study_key"].isin(located.keys())
    for key in frame.loc[missing, "study_key"]:
        quarantine.append({"row_key": key, "row_number": None, "reason": "missing image file", "raw": None})
    frame = frame.loc[~missing].reset_index(drop=True)
    frame["split"] = assign_splits(
        frame, val_fraction=data.val_fraction, test_fraction=data.test_fraction, seed=data.split_seed,
        official=read_official_lists(root),
    ).to_numpy()
    assert_no_patient_leak(frame)

    records, labels = [], {}
    for row in frame.itertuples(index=False):
        path = located[row.study_key]
        stat = path.stat()
        records.append(
            {
                "study_key": row.study_key,
                "patient_id": str(row.patient_id),
                "follow_up": int(row.follow_up),
                "age": float(row.age),
                "sex": row.sex,
                "view": row.view,
                "source": source,
                "split": row.split,
                "image_path": str(path),
                "content_hash": f"{stat.st_size}:{stat.st_mtime_ns}",
                "labelled": True,
            }
        )
        labels[row.study_key] = {f: int(getattr(row, f)) for f in FINDINGS}
    with session_scope(database_url) as session:
        counts = repo.sync_studies(session, records, labels)
        repo.set_splits(session, dict(zip(frame["study_key"], frame["split"])))
        repo.record_quarantine(session, refresh_run_id, source, quarantine)
    split_counts = frame["split"].value_counts().to_dict()
    logger.info("studies: %s; quarantined rows: %d; splits: %s", counts, len(quarantine), split_counts)
    return {"added": counts.added, "updated": counts.updated, "unchanged": counts.unchanged,
            "quarantined": len(quarantine), "rows": len(parsed.studies) + len(parsed.quarantined), "splits": split_counts}


@task(name="build-image-cache")
def build_cache(database_url: str, cache_root: Path, image_size: int, refresh_run_id: int, source: str, workers: int = 0) -> dict:
    """Decode every labelled study once into the resized cache. Unreadable images are
    quarantined; a previously unreadable study whose file now decodes becomes active again."""
    with session_scope(database_url) as session:
        studies = session.query(Study.study_key, Study.image_path, Study.status).filter(Study.labelled.is_(True)).all()
    items = [(key, path) for key, path, _ in studies]
    failures = ImageCache(cache_root, image_size).build(items, workers=workers)
    recovered = [key for key, _, status in studies if status == "quarantined" and key not in failures]
    with session_scope(database_url) as session:
        if failures:
            session.query(Study).filter(Study.study_key.in_(list(failures))).update({"status": "quarantined"}, synchronize_session=False)
            repo.record_quarantine(
                session, refresh_run_id, source,
                [{"row_key": k, "row_number": None, "reason": f"unreadable image: {r}", "raw": None} for k, r in failures.items()],
            )
        if recovered:
            session.query(Study).filter(Study.study_key.in_(recovered)).update({"status": "active"}, synchronize_session=False)
    run_logger().info("image cache %dpx: %d studies, %d unreadable, %d recovered", image_size, len(items), len(failures), len(recovered))
    return {"cached": len(items) - len(failures), "quarantined": len(failures), "recovered": len(recovered)}


@task(name="register-incoming-studies", **DB_RETRIES)
def register_incoming(database_url: str, folder: Path, refresh_run_id: int) -> dict:
    """Register every PNG/DICOM file in ``folder`` as an unlabelled study awaiting scoring, with
    age, sex and view from its DICOM tags and/or the folder's sidecar (``metadata.csv`` or
    ``metadata.json``); sidecar problems are quarantined with their reason, never fatal."""
    folder = Path(folder).resolve()
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in INCOMING_SUFFIXES)
    sidecar, problems = read_sidecar(folder, {p.name for p in paths})
    quarantine = [asdict(p) for p in problems]
    records = []
    for path in paths:
        if not is_plain_file_name(path.name) or path.is_symlink():
            quarantine.append({"row_key": path.name, "row_number": None, "reason": "unsafe file name or symlink", "raw": None})
            continue
        meta = {"age": None, "sex": None, "view": None, "patient_id": None}
        if path.suffix.lower() == ".dcm":
            try:
                meta.update(read_dicom_metadata(path))
            except ImageDecodeError as exc:
                meta["error"] = str(exc)  # still registered: scoring records the failure
        row = sidecar.get(path.name)
        if row is not None:  # a DICOM file's own tags come first; the sidecar fills the gaps
            for field in ("age", "sex", "view", "patient_id"):
                if meta[field] is None:
                    meta[field] = getattr(row, field)
        records.append(
            {
                "study_key": path.name,
                "patient_id": meta["patient_id"],
                "follow_up": None,
                "age": meta["age"],
                "sex": meta["sex"],
                "view": meta["view"],
                "source": "incoming",
                "split": "incoming",
                "image_path": str(path),
                "content_hash": sha256_file(path),
                "labelled": False,
            }
        )
    with session_scope(database_url) as session:
        counts = repo.sync_studies(session, records)
        repo.record_quarantine(session, refresh_run_id, "incoming", quarantine)
    run_logger().info("incoming %s: %s, %d quarantined", folder, counts, len(quarantine))
    return {"added": counts.added, "updated": counts.updated, "unchanged": counts.unchanged, "quarantined": len(quarantine)}


@task(name="fetch-from-hugging-face", retries=3, retry_delay_seconds=30)
def fetch_from_hub(hub: HubConfig, target: Path) -> str:
    """Metadata first, then the image archives (cached, resumable, safely extracted) into the
    NIH layout under ``target``; honours HF_HUB_OFFLINE."""
    source = HubSource(
        repo_id=hub.repo_id, revision=hub.revision, archive_pattern=hub.archive_pattern,
        archives=tuple(hub.archives), cache_dir=hub.cache_dir,
    )
    fetch_dataset(source, Path(target))
    run_logger().info("fetched %s@%s into %s", hub.repo_id, hub.revision, target)
    return str(target)


@task(name="start-refresh-run")
def start_refresh(database_url: str, source: str, location: str, flow_run_id: str | None) -> int:
    with session_scope(database_url) as session:
        return repo.start_refresh(session, source, location, flow_run_id).id


@task(name="finish-refresh-run", **DB_RETRIES)
def finish_refresh(database_url: str, refresh_run_id: int, counts: list[dict]) -> dict:
    """Mark the refresh run completed with the summed counts of its steps; return them."""
    totals = {k: sum(c.get(k, 0) for c in counts) for k in ("added", "updated", "unchanged", "quarantined", "rows")}
    with session_scope(database_url) as session:
        repo.finish_refresh(session, refresh_run_id, totals)
    return totals


def fail_refresh(database_url: str, refresh_run_id: int, error: BaseException) -> None:
    """Mark the refresh run failed with a one-line reason (best effort: the database may be
    what failed)."""
    reason = f"{type(error).__name__}: {error}".splitlines()[0][:500]
    try:
        with session_scope(database_url) as session:
            repo.finish_refresh(session, refresh_run_id, error=reason)
    except Exception:  # noqa: BLE001 - the original error is the one to report
        run_logger().exception("could not mark refresh run %d failed", refresh_run_id)
