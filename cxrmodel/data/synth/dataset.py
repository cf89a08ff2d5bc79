"""Write a synthetic dataset in the real NIH ChestX-ray14 layout.

``root/images/NNNNNNNN_FFF.png``, ``root/Data_Entry_2017_v2020.csv`` (the real header, with its
two split columns), ``root/train_val_list.txt`` and ``root/test_list.txt`` (split by patient),
and optionally ``root/incoming/`` with unlabelled PNG and DICOM studies plus a ``metadata.csv``
sidecar for nightly scoring. Deterministic for a given :class:`SynthConfig`.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cxrmodel.config import SynthConfig
from cxrmodel.data.synth.labels import P_AP, sample_findings, sample_patient
from cxrmodel.data.synth.phantom import render_phantom, sample_anatomy
from cxrmodel.findings import FINDINGS, format_finding_labels
from cxrmodel.io import atomic_save_to, atomic_write

NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
INCOMING_DIR = "incoming"
INCOMING_SIDECAR = "metadata.csv"
INCOMING_TRUTH = "incoming_truth.csv"  # held outside incoming/, for offline checks only
FIRST_INCOMING_PATIENT = 90_000_000


@dataclass(frozen=True)
class StudySpec:
    key: str
    patient_id: int
    follow_up: int
    age: int
    sex: str
    view: str
    findings: frozenset[str]
    seed: tuple[int, ...]


@dataclass
class SynthSummary:
    root: Path
    n_studies: int
    n_patients: int
    n_incoming: int
    label_counts: dict[str, int] = field(default_factory=dict)
    n_no_finding: int = 0


def plan_studies(n_studies: int, seed: int, first_patient: int = 1, stream: int = 0) -> list[StudySpec]:
    """Patients, their follow-up studies, features and findings, without any pixels."""
    rng = np.random.default_rng([seed, stream])
    specs: list[StudySpec] = []
    pid = first_patient
    while len(specs) < n_studies:
        patient = sample_patient(rng, pid)
        for fu in range(patient.n_studies):
            if len(specs) == n_studies:
                break
            age = min(patient.base_age + fu // 3, 99)
            view = "AP" if rng.random() < P_AP else "PA"
            findings = sample_findings(rng, age, view)
            specs.append(StudySpec(f"{pid:08d}_{fu:03d}.png", pid, fu, age, patient.sex, view, findings, (seed, stream, pid, fu)))
        pid += 1
    return specs


def _render(spec: StudySpec, size: int) -> np.ndarray:
    anatomy = sample_anatomy(np.random.default_rng([spec.seed[0], spec.seed[1], spec.patient_id]))
    rng = np.random.default_rng(list(spec.seed) + [7])
    return render_phantom(spec.findings, anatomy, rng, size=size, view=spec.view)


def _write_png(args: tuple[StudySpec, int, str]) -> None:
    spec, size, folder = args
    image = Image.fromarray(_render(spec, size), mode="L")
    atomic_write(Path(folder) / spec.key, lambda fh: image.save(fh, format="PNG", compress_level=1))


def write_dicom(path: Path, pixels: np.ndarray, spec: StudySpec) -> None:
    """Write an uncompressed 8-bit MONOCHROME2 DICOM radiograph with patient tags."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[spec.key])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.PatientID = str(spec.patient_id)
    ds.PatientAge = f"{spec.age:03d}Y"
    ds.PatientSex = spec.sex
    ds.ViewPosition = spec.view
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    atomic_save_to(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))


def _metadata_row(spec: StudySpec, size: int) -> list[str]:
    spacing = f"{0.143 * 2500 / size:.3f}"
    return [
        spec.key,
        format_finding_labels(f for f in FINDINGS if f in spec.findings),
        str(spec.follow_up),
        str(spec.patient_id),
        str(spec.age),
        spec.sex,
        spec.view,
        str(size),
        str(size),
        spacing,
        spacing,
    ]


def _patient_test_split(specs: list[StudySpec], seed: int, test_fraction: float = 0.2) -> set[int]:
    patients = sorted({s.patient_id for s in specs})
    rng = np.random.default_rng([seed, 99])
    n_test = max(1, round(len(patients) * test_fraction))
    return set(rng.choice(patients, size=n_test, replace=False).tolist())


def generate_dataset(root: str | Path, config: SynthConfig = SynthConfig(), workers: int | None = None) -> SynthSummary:
    """Generate (or regenerate identically) the synthetic dataset under ``root``."""
    root = Path(root)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    workers = workers if workers is not None else min(os.cpu_count() or 1, 4)

    specs = plan_studies(config.n_studies, config.seed)
    incoming = plan_studies(config.n_incoming, config.seed, first_patient=FIRST_INCOMING_PATIENT, stream=1)
    jobs = [(s, config.image_size, str(images)) for s in specs]
    incoming_dir = root / INCOMING_DIR
    n_dicom = round(len(incoming) * config.incoming_dicom_fraction)
    dicom_keys = {s.key for s in incoming[:n_dicom]}
    if incoming:
        incoming_dir.mkdir(parents=True, exist_ok=True)
        jobs += [(s, config.image_size, str(incoming_dir)) for s in incoming if s.key not in dicom_keys]
    _run(jobs, workers)
    for spec in incoming[:n_dicom]:
        write_dicom(incoming_dir / spec.key.replace(".png", ".dcm"), _render(spec, config.image_size), spec)

    with open(root / "Data_Entry_2017_v2020.csv", "w", newline="", encoding="utf-8") as fh:
        fh.write(NIH_HEADER + "\n")
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerows(_metadata_row(s, config.image_size) for s in specs)
    test_patients = _patient_test_split(specs, config.seed)
    (root / "test_list.txt").write_text("".join(f"{s.key}\n" for s in specs if s.patient_id in test_patients))
    (root / "train_val_list.txt").write_text("".join(f"{s.key}\n" for s in specs if s.patient_id not in test_patients))

    if incoming:
        with open(incoming_dir / INCOMING_SIDECAR, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["Image Index", "Patient ID", "Patient Age", "Patient Gender", "View Position"])
            for s in incoming:
                if s.key not in dicom_keys:  # DICOM files carry their own tags
                    writer.writerow([s.key, s.patient_id, s.age, s.sex, s.view])
        with open(root / INCOMING_TRUTH, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["Image Index", "Finding Labels"])
            for s in incoming:
                key = s.key.replace(".png", ".dcm") if s.key in dicom_keys else s.key
                writer.writerow([key, format_finding_labels(f for f in FINDINGS if f in s.findings)])

    counts = Counter(f for s in specs for f in s.findings)
    return SynthSummary(
        root=root,
        n_studies=len(specs),
        n_patients=len({s.patient_id for s in specs}),
        n_incoming=len(incoming),
        label_counts={f: counts.get(f, 0) for f in FINDINGS},
        n_no_finding=sum(1 for s in specs if not s.findings),
    )


def _run(jobs: list, workers: int) -> None:
    if workers <= 1 or len(jobs) < 64:
        for job in jobs:
            _write_png(job)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_write_png, jobs, chunksize=32))
