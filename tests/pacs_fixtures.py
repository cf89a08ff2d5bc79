"""A real PACS for the tests: Orthanc with its DICOMweb plugin, started from a temporary JSON
configuration on a free port (HTTP on the loopback only, its DICOM port off, authentication on,
storage in a temporary folder), and radiographs made with pydicom from the real fixtures.

The test data (:func:`make_instances`): the three NIH PNGs and the two real DICOM radiographs
re-identified with fresh UIDs as CR and DX instances, PA and AP; a lateral-only study; a study
with a frontal DX and a CT instance (ignored); an instance without pixel data; one over the
pixel limit the tests set (:data:`TEST_MAX_PIXELS`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ORTHANC = os.environ.get("CXR_ORTHANC", "/usr/sbin/Orthanc")
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
USER, PASSWORD = "cxr-night", "s3cret-pacs-pw"
FIXTURES = Path(__file__).parent / "fixtures"
#: The pixel limit the PACS tests set (CXR_DICOMWEB_MAX_PIXELS): the "too large" instance is above it.
TEST_MAX_PIXELS = 1_200_000
CR_CLASS = "1.2.840.10008.5.1.4.1.1.1"
DX_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"


def dicomweb_plugin() -> str | None:
    for folder in PLUGIN_DIRS:
        for path in sorted(Path(folder).glob("libOrthancDicomWeb.so*")) if Path(folder).is_dir() else []:
            return str(path)
    return None


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here (None when it can)."""
    if not (Path(ORTHANC).is_file() or shutil.which("Orthanc")):
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
    if dicomweb_plugin() is None:
        return "Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return None


@dataclass
class OrthancServer:
    """A running Orthanc: its DICOMweb root, REST root and credentials."""

    port: int
    folder: Path
    process: subprocess.Popen | None = None

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.rest}/dicom-web"

    def start(self) -> OrthancServer:
        config = {
            "Name": "cxr-test-pacs",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,  # loopback clients only
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "DicomServerEnabled": False,
            "HttpTimeout": 10,
            "StableAge": 1,
            "SaveJobs": False,
            "Plugins": [dicomweb_plugin()],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": False,
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            },
        }
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config))
        self._log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen(
            [shutil.which("Orthanc") or ORTHANC, str(path)], stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.wait()
        return self

    def wait(self, timeout: float = 60) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.process.returncode}): {self.log()[-2000:]}")
            try:
                if httpx.get(f"{self.rest}/system", auth=(USER, PASSWORD), timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"Orthanc did not answer within {timeout:.0f} s: {self.log()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process is not None:
            self._log.close()
        self.process = None

    def log(self) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def upload(self, datasets: list[Dataset]) -> None:
        """Store instances through Orthanc's REST API (what a modality's C-STORE would do)."""
        import httpx

        for ds in datasets:
            response = httpx.post(f"{self.rest}/instances", content=to_bytes(ds), auth=(USER, PASSWORD), timeout=30)
            response.raise_for_status()

    def clear(self) -> None:
        import httpx

        for study in httpx.get(f"{self.rest}/studies", auth=(USER, PASSWORD)).json():
            httpx.delete(f"{self.rest}/studies/{study}", auth=(USER, PASSWORD)).raise_for_status()

    def series_of_study(self, study_uid: str) -> list[dict]:
        """Every series of a study (QIDO-RS JSON), straight from the PACS."""
        import httpx

        response = httpx.get(f"{self.dicomweb}/studies/{study_uid}/series", auth=(USER, PASSWORD), timeout=30)
        if response.status_code == 204 or not response.content:
            return []
        response.raise_for_status()
        return response.json()


def to_bytes(ds: Dataset) -> bytes:
    import io

    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Test instances


def _base(sop_class: str, modality: str, study_uid: str, accession: str, patient: str, study_date: date) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientName = f"Test^{patient}"
    ds.PatientID = patient
    ds.PatientBirthDate = ""
    ds.PatientSex = "F" if patient.endswith(("1", "3", "5", "7", "9")) else "M"
    ds.PatientAge = "054Y"
    ds.StudyDate = f"{study_date:%Y%m%d}"
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.StudyID = accession[-8:]
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "cxr-test"
    return ds


def _pixels(ds: Dataset, image: np.ndarray) -> Dataset:
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    return ds


def radiograph(
    image: np.ndarray, *, modality: str, view: str, accession: str, patient: str, study_uid: str | None = None, study_date: date
) -> Dataset:
    """A CR or DX instance of ``image`` (8-bit grey) with the given View Position."""
    ds = _base(CR_CLASS if modality == "CR" else DX_CLASS, modality, study_uid or generate_uid(), accession, patient, study_date)
    ds.ViewPosition = view
    ds.BodyPartExamined = "CHEST"
    if modality == "DX":
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
    return _pixels(ds, image)


def nih_image(name: str, side: int = 256) -> np.ndarray:
    with Image.open(FIXTURES / "nih-sample" / "images" / name) as im:
        return np.asarray(im.convert("L").resize((side, side)), dtype=np.uint8)


def real_dicom(name: str, *, modality: str, view: str, accession: str, patient: str, study_date: date) -> Dataset:
    """A real DICOM fixture with fresh UIDs and our identifiers (its pixels as they are)."""
    ds = pydicom.dcmread(FIXTURES / "dicom" / name)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality, ds.ViewPosition, ds.AccessionNumber = modality, view, accession
    ds.PatientID, ds.PatientName, ds.StudyDate = patient, f"Test^{patient}", f"{study_date:%Y%m%d}"
    return ds


@dataclass
class TestInstances:
    """What the PACS holds on the first night, and what the pull must make of it."""

    frontal: list[Dataset]  # registered and scored
    lateral_only: Dataset
    lateral_beside_frontal: Dataset
    ct: Dataset  # in a study with a frontal DX (seen, skipped)
    ct_only: Dataset  # a CT study: never searched
    no_pixels: Dataset
    too_large: Dataset

    @property
    def all(self) -> list[Dataset]:
        return [
            *self.frontal,
            self.lateral_only,
            self.lateral_beside_frontal,
            self.ct,
            self.ct_only,
            self.no_pixels,
            self.too_large,
        ]


def make_instances(study_date: date) -> TestInstances:
    nih = ["00000001_000.png", "00000002_000.png", "00000013_003.png"]
    frontal = [
        radiograph(nih_image(nih[0]), modality="CR", view="PA", accession="ACC0001", patient="P0001", study_date=study_date),
        radiograph(nih_image(nih[1]), modality="DX", view="AP", accession="ACC0002", patient="P0002", study_date=study_date),
        real_dicom("siim_cxr.dcm", modality="CR", view="PA", accession="ACC0003", patient="P0003", study_date=study_date),
        real_dicom("monochrome1_cxr.dcm", modality="DX", view="AP", accession="ACC0004", patient="P0004", study_date=study_date),
    ]
    mixed = radiograph(nih_image(nih[2]), modality="DX", view="PA", accession="ACC0005", patient="P0005", study_date=study_date)
    frontal.append(mixed)
    lateral_beside = radiograph(
        nih_image(nih[2], 200),
        modality="DX",
        view="LL",
        accession="ACC0005",
        patient="P0005",
        study_uid=mixed.StudyInstanceUID,
        study_date=study_date,
    )
    lateral_only = radiograph(
        nih_image(nih[0], 200), modality="CR", view="LL", accession="ACC0006", patient="P0006", study_date=study_date
    )
    ct = _pixels(_base(CT_CLASS, "CT", mixed.StudyInstanceUID, "ACC0005", "P0005", study_date), np.zeros((64, 64), np.uint8))
    ct_only = _pixels(_base(CT_CLASS, "CT", generate_uid(), "ACC0007", "P0007", study_date), np.zeros((64, 64), np.uint8))
    no_pixels = _base(DX_CLASS, "DX", generate_uid(), "ACC0008", "P0008", study_date)
    no_pixels.ViewPosition = "PA"
    too_large = radiograph(
        np.full((1100, 1200), 80, np.uint8), modality="CR", view="PA", accession="ACC0009", patient="P0009", study_date=study_date
    )
    return TestInstances(frontal, lateral_only, lateral_beside, ct, ct_only, no_pixels, too_large)
