"""The PACS library code without a PACS: the SR's derived UIDs and coded findings, its
conformance (``dciodvfy``) on both real DICOM fixtures, and the pull's decisions on instance
metadata and on retrieved bytes (lateral-only studies, pixel limits, files that do not decode)."""

from __future__ import annotations

from datetime import date

import numpy as np
import pydicom
import pytest
from pacs_fixtures import FIXTURES, make_instances, radiograph, to_bytes
from pydicom.sr.codedict import codes
from test_pacs import dciodvfy_errors

from cxrmodel.findings import FINDINGS
from cxrmodel.pacs.pull import UnusableInstanceError, candidates, store_instance
from cxrmodel.pacs.sr import (
    NOT_A_DIAGNOSIS,
    PRIVATE_SCHEME,
    FindingResult,
    ModelIdentity,
    build_report,
    finding_code,
    read_report,
    report_uids,
)

MODEL = ModelIdentity("seed004-test", "ab" * 32)


def results(p: float = 0.7) -> list[FindingResult]:
    return [FindingResult(f, p, 0.5, p >= 0.5) for f in FINDINGS]


def test_uids_derive_from_the_prediction_identity():
    first = report_uids("1.2.3", "1.2.3.4", MODEL, 7)
    assert first == report_uids("1.2.3", "1.2.3.4", MODEL, 7)  # sending again: the same instance
    assert first.sop_instance_uid != report_uids("1.2.3", "1.2.3.4", MODEL, 8).sop_instance_uid
    assert first.sop_instance_uid != report_uids("1.2.3", "1.2.3.5", MODEL, 7).sop_instance_uid
    assert first.series_instance_uid == report_uids("1.2.3", "1.2.3.5", MODEL, 8).series_instance_uid  # one series per study
    assert all(len(u) <= 64 for u in (first.series_instance_uid, first.sop_instance_uid, first.device_uid))


def test_findings_are_coded_from_the_bundled_dictionary_or_the_private_scheme():
    assert (finding_code("Effusion").value, finding_code("Effusion").scheme_designator) == (
        codes.SCT.PleuralEffusion.value,
        "SCT",
    )
    assert finding_code("Cardiomegaly").value == codes.SCT.Cardiomegaly.value == "287272002"
    assert finding_code("Pneumothorax").value == "36118008"
    private = [f for f in FINDINGS if finding_code(f).scheme_designator == PRIVATE_SCHEME]
    assert private == ["Atelectasis", "Pneumonia", "Consolidation", "Emphysema", "Pleural_Thickening", "Hernia"]
    assert len({finding_code(f).value for f in FINDINGS}) == len(FINDINGS)


def test_a_report_needs_all_14_findings():
    source = pydicom.dcmread(FIXTURES / "dicom" / "siim_cxr.dcm", stop_before_pixels=True)
    with pytest.raises(ValueError, match="each of the 14 findings once"):
        build_report(source, results()[:-1], MODEL, 1)


@pytest.mark.parametrize("name", ["siim_cxr.dcm", "monochrome1_cxr.dcm"])
def test_reports_on_the_real_fixtures_pass_dciodvfy(name, tmp_path):
    source = pydicom.dcmread(FIXTURES / "dicom" / name, stop_before_pixels=True)
    assert source.PatientAge == "62"  # not valid DICOM (AS needs 062Y): the report must not copy it as is
    report = build_report(source, results(0.3), MODEL, 1)
    path = tmp_path / "sr.dcm"
    report.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    back = read_report(pydicom.dcmread(path))
    assert back["Comment"] == NOT_A_DIAGNOSIS and back["Device Observer Serial Number"] == MODEL.sha256
    assert {v["decision"] for v in back["findings"].values()} == {"Absent"}
    assert pydicom.dcmread(path).PatientAge == "062Y"


def test_candidates_say_why_each_instance_is_skipped():
    data = make_instances(date(2026, 1, 2))

    def meta(ds):
        return ds.to_json_dict(bulk_data_threshold=1, bulk_data_element_handler=lambda _: "bulk")

    mixed = candidates([meta(d) for d in (data.frontal[4], data.lateral_beside_frontal, data.ct)], ("CR", "DX"), 10**6, "pacs")
    assert [c.skip for c in mixed] == [None, "not a frontal view (View Position LL)", "not a radiograph (modality CT)"]
    (lateral,) = candidates([meta(data.lateral_only)], ("CR", "DX"), 10**6, "pacs")
    assert lateral.skip == "lateral-only study: not a frontal view (View Position LL)"
    (large,) = candidates([meta(data.too_large)], ("CR", "DX"), 10**6, "pacs")
    assert large.skip == "over the pixel limit: 1100x1200 is over 1000000 pixels"
    assert mixed[0].fields["accession_number"] == "ACC0005" and mixed[0].fields["view"] == "PA"


def test_retrieved_bytes_that_are_unusable_are_refused_and_nothing_is_kept(tmp_path):
    data = make_instances(date(2026, 1, 2))
    store = tmp_path / "store"
    with pytest.raises(UnusableInstanceError) as err:
        store_instance(to_bytes(data.no_pixels), store, 10**6)
    assert (err.value.status, err.value.reason) == ("skipped", "no pixel data")
    truncated = radiograph(
        np.zeros((64, 64), np.uint8), modality="CR", view="PA", accession="X", patient="P1", study_date=date(2026, 1, 2)
    )
    truncated.PixelData = truncated.PixelData[:100]
    with pytest.raises(UnusableInstanceError) as err:
        store_instance(to_bytes(truncated), store, 10**6)
    assert err.value.status == "failed" and err.value.reason.startswith("does not decode")
    with pytest.raises(UnusableInstanceError, match="over the pixel limit"):
        store_instance(to_bytes(data.frontal[0]), store, 100)
    assert list(store.iterdir()) == []
    path, digest = store_instance(to_bytes(data.frontal[0]), store, 10**6)
    assert path == store / f"{digest}.dcm" and [p.name for p in store.iterdir()] == [path.name]
