"""A labelled NIH-layout folder as study records: metadata parsed, bad rows quarantined,
images located, patient-level splits assigned, every image hashed once.

The same path for the real dataset, the Hugging Face copy and the synthetic phantoms.
"""

from __future__ import annotations

import os
from pathlib import Path

from cxrmodel.config import DataConfig
from cxrmodel.data.metadata import QuarantineRecord, locate_images, read_nih_metadata
from cxrmodel.data.records import StudyBatch, study_record
from cxrmodel.data.splits import assert_no_patient_leak, assign_splits, read_official_lists
from cxrmodel.findings import FINDINGS
from cxrmodel.io import MissingInputError, sha256_files
from cxrmodel.progress import ProgressCallback

METADATA_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")


def find_metadata_file(root: Path) -> Path:
    for name in METADATA_NAMES:
        if (root / name).is_file():
            return root / name
    raise MissingInputError(f"no {' or '.join(METADATA_NAMES)} in {root}")


def read_labelled_dataset(
    root: str | os.PathLike[str],
    source: str,
    data: DataConfig,
    hash_threads: int = 4,
    on_progress: ProgressCallback | None = None,
) -> StudyBatch:
    """Study records (labelled, with their split and the sha256 of their image), labels by study
    key, and a quarantine record for every rejected metadata row and every missing image.
    ``on_progress(done, total)`` follows the images as they are hashed."""
    root = Path(root).resolve()
    parsed = read_nih_metadata(find_metadata_file(root))
    frame = parsed.studies
    quarantined = [
        QuarantineRecord(q.row_key or f"line {q.row_number}", q.row_number, q.reason, q.raw) for q in parsed.quarantined
    ]
    located = locate_images(root, frame["study_key"])
    missing = ~frame["study_key"].isin(located.keys())
    quarantined += [QuarantineRecord(key, None, "missing image file", None) for key in frame.loc[missing, "study_key"]]
    frame = frame.loc[~missing].reset_index(drop=True)
    frame["split"] = assign_splits(
        frame,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        seed=data.split_seed,
        official=read_official_lists(root),
    ).to_numpy()
    assert_no_patient_leak(frame)

    paths = [located[key] for key in frame["study_key"]]
    hashes = sha256_files(paths, hash_threads, on_progress)
    records, labels = [], {}
    for row, path, content_hash in zip(frame.itertuples(index=False), paths, hashes, strict=True):
        records.append(
            study_record(
                row.study_key,
                path,
                content_hash,
                source=source,
                split=row.split,
                labelled=True,
                patient_id=str(row.patient_id),
                follow_up=int(row.follow_up),
                age=float(row.age),
                sex=row.sex,
                view=row.view,
            )
        )
        labels[row.study_key] = {f: int(getattr(row, f)) for f in FINDINGS}
    splits = dict(zip(frame["study_key"], frame["split"], strict=True))
    return StudyBatch(records, quarantined, labels, splits, n_rows=len(parsed.studies) + len(parsed.quarantined))
