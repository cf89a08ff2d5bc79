"""The model's findings on one radiograph as a DICOM Comprehensive Structured Report (highdicom).

Why an SR and not a PDF or a burned-in image: a radiologist's viewer shows an SR beside the
image it references, its findings are coded (a PACS or a registry can query them), and the
report travels with the study. The report says who made it (the model version as the observer
device, its weights' sha256 as the device's serial number and the algorithm version), which
image it is about, and, for each of the 14 findings, its probability, the threshold of the
active threshold set and the decision at that threshold, and that it is research output, not
a diagnosis.

Findings are coded with the concepts of pydicom's bundled code dictionary (SNOMED CT where it
holds the concept, DICOM's own otherwise) and with a private coding scheme (:data:`PRIVATE_SCHEME`)
for the findings neither names: codes are looked up, never typed in by hand.

UIDs are derived from the prediction's identity (:func:`report_uids`): sending the same report
again re-sends the same instance, which a PACS stores once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

from cxrmodel.findings import FINDINGS

#: The private coding scheme of the findings with no concept in the bundled dictionaries.
PRIVATE_SCHEME = "99CXR"
PRIVATE_SCHEME_NAME = "cxr-pipeline NIH ChestX-ray14 findings"

#: Root of the derived UIDs (pydicom's; with a prefix, ``generate_uid`` hashes its entropy
#: sources, so the same sources give the same UID; without one it would be a random UUID).
UID_ROOT = PYDICOM_ROOT_UID

#: Shown in every report (and in its Comment item).
NOT_A_DIAGNOSIS = (
    "Research output of a chest X-ray classifier (NIH ChestX-ray14 findings); not a medical device, "
    "not a diagnosis. Probabilities and decisions must not be used for patient care."
)

#: Series description of the report series in the source study (what a viewer lists).
SERIES_DESCRIPTION = "CXR research model findings (not a diagnosis)"
SR_SERIES_NUMBER = 9901
MANUFACTURER = "cxr-pipeline"

# The concept of each finding: a keyword of pydicom's dictionary (scheme, keyword), or None for
# the private scheme. SNOMED CT first; DICOM's own "Infiltrate" for NIH's "Infiltration".
_DICTIONARY_CONCEPTS: dict[str, tuple[str, str] | None] = {
    "Atelectasis": None,
    "Cardiomegaly": ("SCT", "Cardiomegaly"),
    "Effusion": ("SCT", "PleuralEffusion"),
    "Infiltration": ("DCM", "Infiltrate"),
    "Mass": ("SCT", "Mass"),
    "Nodule": ("SCT", "Nodule"),
    "Pneumonia": None,
    "Pneumothorax": ("SCT", "Pneumothorax"),
    "Consolidation": None,
    "Edema": ("SCT", "PulmonaryEdema"),
    "Emphysema": None,
    "Fibrosis": ("SCT", "Fibrosis"),
    "Pleural_Thickening": None,
    "Hernia": None,
}


def finding_code(finding: str) -> hd.sr.CodedConcept:
    """The coded concept of one of the 14 findings (``KeyError`` for any other name)."""
    concept = _DICTIONARY_CONCEPTS[finding]
    if concept is None:
        # the code value is the finding's place in the fixed NIH order (at most 16 characters)
        return hd.sr.CodedConcept(
            value=f"CXR{FINDINGS.index(finding) + 1:02d}", scheme_designator=PRIVATE_SCHEME, meaning=finding.replace("_", " ")
        )
    scheme, keyword = concept
    code = getattr(getattr(codes, scheme), keyword)
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme_designator, meaning=code.meaning)


@dataclass(frozen=True)
class FindingResult:
    """One finding of one prediction: its probability, the threshold and the decision."""

    finding: str
    probability: float
    threshold: float
    positive: bool


@dataclass(frozen=True)
class ModelIdentity:
    """The model version that made the prediction (the SR's observer device)."""

    name: str
    sha256: str


@dataclass(frozen=True)
class ReportUids:
    series_instance_uid: str
    sop_instance_uid: str
    device_uid: str


def report_uids(study_instance_uid: str, sop_instance_uid: str, model: ModelIdentity, threshold_set_id: int) -> ReportUids:
    """UIDs derived from the prediction's identity (:func:`pydicom.uid.generate_uid` under
    :data:`UID_ROOT` with entropy sources: a hash of them): the same source image, model weights and threshold set give the same
    report instance, so re-sending is a no-op. One series per study and model version."""
    return ReportUids(
        series_instance_uid=generate_uid(UID_ROOT, ["cxr-sr-series", study_instance_uid, model.sha256]),
        sop_instance_uid=generate_uid(UID_ROOT, ["cxr-sr", sop_instance_uid, model.sha256, str(threshold_set_id)]),
        device_uid=generate_uid(UID_ROOT, ["cxr-device", model.sha256]),
    )


def _property(item: hd.sr.ContentItem, children: Sequence[hd.sr.ContentItem]) -> hd.sr.ContentItem:
    item.ContentSequence = hd.sr.ContentSequence(list(children), is_root=False, is_sr=True)
    return item


def _finding_item(result: FindingResult) -> hd.sr.CodeContentItem:
    unit = codes.UCUM.NoUnits
    children = [
        hd.sr.NumContentItem(
            codes.DCM.Probability, round(float(result.probability), 6), unit, relationship_type="HAS PROPERTIES"
        ),
        hd.sr.NumContentItem(
            codes.DCM.ThresholdValue, round(float(result.threshold), 6), unit, relationship_type="HAS PROPERTIES"
        ),
        hd.sr.CodeContentItem(
            codes.DCM.PresenceOfProperty,
            codes.SCT.Present if result.positive else codes.SCT.Absent,
            relationship_type="HAS PROPERTIES",
        ),
    ]
    item = hd.sr.CodeContentItem(codes.DCM.Finding, finding_code(result.finding), relationship_type="CONTAINS")
    return _property(item, children)


#: What a report copies from its source image: the patient, the study, and the image's own
#: identifiers (its evidence reference). Nothing else is carried: a full header would only be
#: copied around (it made building a report three times slower) and could leak into the report.
SOURCE_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
    "SeriesInstanceUID",
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
)


def conformant_header(source: Dataset) -> Dataset:
    """The :data:`SOURCE_ATTRIBUTES` of the source header, as valid DICOM: a Patient's Age written
    without its unit (``62``, seen in real files) becomes ``062Y``; one that does not parse is
    left out (the report must pass ``dciodvfy`` whatever the modality wrote). The caller's
    dataset is not changed."""
    header = Dataset()
    for keyword in SOURCE_ATTRIBUTES:
        if keyword in source:
            header[keyword] = source[keyword]
    age = str(source.get("PatientAge", "") or "").strip()
    if age and not (len(age) == 4 and age[:3].isdigit() and age[3] in "DWMY"):
        digits = age.rstrip("DWMYdwmy ").strip()
        unit = age[len(digits) :].strip().upper() or "Y"
        if digits.isdigit() and len(digits) <= 3 and unit in ("D", "W", "M", "Y"):
            header.PatientAge = f"{int(digits):03d}{unit}"
        else:
            del header.PatientAge
    return header


def build_report(
    source: Dataset,
    results: Sequence[FindingResult],
    model: ModelIdentity,
    threshold_set_id: int,
    instance_number: int = 1,
) -> hd.sr.ComprehensiveSR:
    """The Comprehensive SR of ``results`` about ``source`` (the source image's header: its
    patient, study and SOP identifiers are copied, its pixels are not needed), in a new series
    of the source study. ``results`` must hold each of the 14 findings once."""
    names = [r.finding for r in results]
    if sorted(names) != sorted(FINDINGS):
        raise ValueError(f"a report needs each of the {len(FINDINGS)} findings once, got {names}")
    source = conformant_header(source)
    uids = report_uids(source.StudyInstanceUID, source.SOPInstanceUID, model, threshold_set_id)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids.device_uid,
            name=model.name[:64],
            manufacturer_name=MANUFACTURER,
            model_name=model.name[:64],
            serial_number=model.sha256[:64],
        ),
    )
    root = hd.sr.ContainerContentItem(codes.LN.DiagnosticImagingReport)
    items: list[hd.sr.ContentItem] = list(hd.sr.ObservationContext(observer_device_context=device))
    items += [
        hd.sr.TextContentItem(codes.DCM.AlgorithmName, model.name, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(codes.DCM.AlgorithmVersion, f"sha256:{model.sha256}", relationship_type="CONTAINS"),
        hd.sr.TextContentItem(codes.DCM.Comment, NOT_A_DIAGNOSIS, relationship_type="CONTAINS"),
        hd.sr.ImageContentItem(codes.DCM.SourceImage, source.SOPClassUID, source.SOPInstanceUID, relationship_type="CONTAINS"),
    ]
    by_name = {r.finding: r for r in results}
    items += [_finding_item(by_name[f]) for f in FINDINGS]
    root.ContentSequence = hd.sr.ContentSequence(items, is_root=False, is_sr=True)
    report = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=root,
        series_instance_uid=uids.series_instance_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    report.SeriesDescription = SERIES_DESCRIPTION
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = PRIVATE_SCHEME_NAME
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    report.CodingSchemeIdentificationSequence = DicomSequence([scheme])
    return report


def read_report(report: Dataset) -> dict[str, object]:
    """The fields a reader checks, out of an SR made by :func:`build_report` (read back from a
    PACS): the observer device, the algorithm, the referenced image, the comment and, per
    finding name (the code meaning), its code, probability, threshold and decision."""
    out: dict[str, object] = {"findings": {}}
    for item in report.ContentSequence:
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        kind = item.ValueType
        if kind == "TEXT":
            out[name] = item.TextValue
        elif kind == "UIDREF":
            out[name] = item.UID
        elif kind == "IMAGE":
            ref = item.ReferencedSOPSequence[0]
            out["Source image"] = (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID)
        elif kind == "CODE" and name == "Finding":
            code = item.ConceptCodeSequence[0]
            props = {c.ConceptNameCodeSequence[0].CodeMeaning: c for c in item.ContentSequence}
            out["findings"][code.CodeMeaning] = {
                "code": (code.get("CodeValue") or code.get("LongCodeValue"), code.CodingSchemeDesignator),
                "probability": float(props["Probability"].MeasuredValueSequence[0].NumericValue),
                "threshold": float(props["Threshold Value"].MeasuredValueSequence[0].NumericValue),
                "decision": props["Presence of property"].ConceptCodeSequence[0].CodeMeaning,
            }
        elif kind == "CODE":
            out[name] = item.ConceptCodeSequence[0].CodeMeaning
    return out
