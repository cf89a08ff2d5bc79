"""Attacks on the data path (issue 16), each a regression test on real files, and on SQLite and
PostgreSQL wherever a database is involved: over-long and out-of-range values, NUL characters,
non-UTF-8 bytes, decompression bombs, DICOM tags out of range, symlinked sidecars and images,
unsafe file names, contradictory labels, a wrong header or an empty file."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from adversarial_helpers import DATA, labelled_folder, nih_row, open_refresh, png_bomb, studies_and_reasons
from test_scoring_faults import write_png

from cxrmodel.data.imaging import MAX_PIXELS, ImageDecodeError, read_grayscale
from cxrmodel.data.metadata import MetadataFileError, read_nih_metadata
from cxrmodel.errors import UserError
from db.engine import get_engine
from db.models import QuarantinedRow, Study
from db.validation import column_limits
from tasks.data import ingest_labelled, register_incoming

DICOM = Path(__file__).parent / "fixtures" / "dicom" / "siim_cxr.dcm"


@pytest.fixture
def url(migrated_url) -> Iterator[str]:
    yield migrated_url
    get_engine(migrated_url).dispose()


# --- 1. one validation layer, both databases -------------------------------------------------


def test_column_limits_come_from_the_models():
    limits = column_limits(Study)
    assert limits["study_key"].max_length == Study.__table__.c.study_key.type.length == 128
    assert limits["patient_id"].max_length == 64
    assert limits["follow_up"].int_range == (-(2**31), 2**31 - 1)
    assert column_limits(QuarantinedRow)["reason"].max_length == 512


def test_over_long_values_quarantine_their_row_and_the_refresh_goes_on(url, tmp_path):
    good = [nih_row(i) for i in range(1, 11)]
    bad = [
        nih_row(11, age="a" * 600),  # its quarantine reason quoted the whole cell: over varchar(512)
        nih_row(12, patient="9" * 100),  # over varchar(64)
        nih_row(13, key=f"{'x' * 200}.png"),  # over varchar(128)
        f"00000014_000.png,Effusion,{10**12},14,40,M,PA,1024,1024,0.1,0.1",  # follow-up over INTEGER
    ]
    folder = labelled_folder(tmp_path, [*good, *bad])
    run_id = open_refresh(url)
    totals = ingest_labelled.fn(url, folder, "synthetic", DATA, run_id)
    studies, reasons = studies_and_reasons(url, run_id)
    assert totals.added == len(good) and set(studies) == {r.split(",")[0] for r in good}
    assert totals.quarantined == len(bad)
    assert any("malformed number in Patient Age" in r for r in reasons["00000011_000.png"])
    assert reasons["00000012_000.png"] == ["value does not fit the database: patient_id longer than 64 characters (100)"]
    assert any("study_key longer than 128" in r for r in reasons[f"{'x' * 200}.png"])
    assert any("follow_up outside" in r for r in reasons["00000014_000.png"])
    assert all(len(r) <= 512 for rs in reasons.values() for r in rs)


def test_a_nul_character_is_refused_by_the_validation_layer(url):
    from db import studies
    from db.engine import session_scope

    record = {"study_key": "a.png", "source": "s", "image_path": "/a\x00b", "labelled": False, "patient_id": "1"}
    with session_scope(url) as session:
        counts = studies.sync_studies(session, [record])
    assert counts.added == 0 and [r.reason for r in counts.rejected] == [
        "value does not fit the database: image_path contains a NUL character"
    ]


def test_a_quarantine_record_is_cut_to_fit_its_columns(url):
    from cxrmodel.data.metadata import QuarantineRecord
    from db import refresh
    from db.engine import session_scope

    run_id = open_refresh(url)
    with session_scope(url) as session:
        refresh.record_quarantine(session, run_id, "s", [QuarantineRecord("k" * 300, 2, "r" * 600, "raw\x00with NUL")])
        refresh.finish_refresh(session, run_id, error="e\x00" * 10)
    _, reasons = studies_and_reasons(url, run_id)
    ((key, (reason,)),) = reasons.items()
    assert len(key) == 256 and len(reason) == 512 and reason.endswith("…")


def test_over_long_incoming_name_and_nul_characters_are_quarantined(url, tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    write_png(folder / "fine.png")
    long_name = f"{'n' * 200}.png"
    write_png(folder / long_name, seed=1)
    (folder / "metadata.csv").write_text(f"file,age,patient_id\nfine.png,40,P\x001\n{'z' * 300}.png,{'7' * 600},P2\n")
    run_id = open_refresh(url, "incoming")
    totals = register_incoming.fn(url, folder, run_id)
    studies, reasons = studies_and_reasons(url, run_id)
    assert totals.added == 1 and set(studies) == {"fine.png"}
    assert studies["fine.png"].patient_id is None  # the NUL value did not reach the database
    assert any("study_key longer than 128" in r for r in reasons[long_name])
    assert reasons["fine.png"] == ["sidecar metadata.csv: patient_id with control characters"]
    assert all(len(k) <= 256 for k in reasons) and all(len(r) <= 512 for rs in reasons.values() for r in rs)


# --- 2. non-UTF-8 bytes ----------------------------------------------------------------------


def test_a_non_utf8_byte_quarantines_only_its_row(url, tmp_path, caplog):
    good = [nih_row(i) for i in range(1, 241)]
    bad = nih_row(241).replace("Effusion", "Eff\xfasion").encode("latin-1")
    folder = labelled_folder(tmp_path, [*good[:120], bad, *good[120:]], n_images=241)
    run_id = open_refresh(url)
    with caplog.at_level("DEBUG"):
        totals = ingest_labelled.fn(url, folder, "synthetic", DATA, run_id)
    studies, reasons = studies_and_reasons(url, run_id)
    assert totals.added == 240 and len(studies) == 240
    assert reasons["00000241_000.png"] == ["not UTF-8 text (byte 21 of the line)"]
    assert "00000120_000.png" not in caplog.text  # no file content in the log


def test_a_header_that_is_not_text_is_a_user_error(tmp_path):
    path = tmp_path / "Data_Entry_2017_v2020.csv"
    path.write_bytes(b"\xff\xfe" + "Image Index".encode("utf-16-le") + b"\n")
    with pytest.raises(MetadataFileError, match="not UTF-8") as caught:
        read_nih_metadata(path)
    assert isinstance(caught.value, UserError)


# --- 4. decompression bombs ------------------------------------------------------------------


def test_a_png_bomb_is_refused_from_its_header(tmp_path):
    bomb = png_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 2_000_000
    started = time.perf_counter()
    with pytest.raises(ImageDecodeError, match=r"image too large: 12000x12000 is over .* pixels \(refused before decoding\)"):
        read_grayscale(bomb)
    assert time.perf_counter() - started < 1.0


def test_a_dicom_bomb_is_refused_from_its_header(tmp_path):
    ds = pydicom.dcmread(DICOM)
    ds.Rows = ds.Columns = 20000  # the header claims 400 M pixels; the pixel data is not read
    ds.save_as(tmp_path / "bomb.dcm")
    with pytest.raises(ImageDecodeError, match="image too large: 20000x20000"):
        read_grayscale(tmp_path / "bomb.dcm")
    assert 20000 * 20000 > MAX_PIXELS


def test_a_refused_bomb_is_a_recorded_scoring_failure(tmp_path):
    from cxrmodel.inference import score_studies  # noqa: F401 - the reader every path uses

    with pytest.raises(ImageDecodeError) as caught:
        read_grayscale(png_bomb(tmp_path / "b.png", side=8000))
    assert caught.value.reason.startswith("image too large")


# --- 5. DICOM age, 6. symlinks, unsafe names --------------------------------------------------


def test_dicom_age_out_of_range_is_left_out_and_quarantined(url, tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    ds = pydicom.dcmread(DICOM)
    ds.PatientAge = "999Y"
    ds.save_as(folder / "old.dcm")
    run_id = open_refresh(url, "incoming")
    register_incoming.fn(url, folder, run_id)
    studies, reasons = studies_and_reasons(url, run_id)
    assert studies["old.dcm"].age is None and studies["old.dcm"].sex == "M"
    assert reasons["old.dcm"] == ["DICOM PatientAge: age '999Y' outside 0-120 years"]


def test_a_symlinked_sidecar_is_refused_like_a_symlinked_image(url, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("file,age\nsecret-patient-data.png,42\n")
    folder = tmp_path / "incoming"
    folder.mkdir()
    write_png(folder / "a.png")
    write_png(tmp_path / "outside.png", seed=3)
    (folder / "metadata.csv").symlink_to(secret)
    (folder / "linked.png").symlink_to(tmp_path / "outside.png")
    run_id = open_refresh(url, "incoming")
    register_incoming.fn(url, folder, run_id)
    studies, reasons = studies_and_reasons(url, run_id)
    assert set(studies) == {"a.png"}
    assert reasons["metadata.csv"] == ["sidecar metadata.csv: a symlink, refused"]
    assert reasons["linked.png"] == ["unsafe file name or symlink"]
    with get_engine(url).connect() as conn:
        raws = [r for (r,) in conn.exec_driver_sql("SELECT raw FROM quarantined_rows") if r]
    assert not any("secret-patient-data" in r for r in raws)


def test_path_traversal_keys_are_quarantined(url, tmp_path):
    folder = labelled_folder(tmp_path, [nih_row(1), nih_row(2, key="../../etc/passwd")])
    run_id = open_refresh(url)
    totals = ingest_labelled.fn(url, folder, "synthetic", DATA, run_id)
    _, reasons = studies_and_reasons(url, run_id)
    assert totals.added == 1
    assert any("not a plain file name" in r for r in reasons["../../etc/passwd"])


# --- 10. contradictions, wrong header, empty file --------------------------------------------


def test_no_finding_with_findings_is_a_contradiction(tmp_path):
    folder = labelled_folder(tmp_path, [nih_row(1), nih_row(2, labels="No Finding|Effusion")])
    result = read_nih_metadata(folder / "Data_Entry_2017_v2020.csv")
    assert [q.reason for q in result.quarantined] == ["contradiction: No Finding with findings"]


@pytest.mark.parametrize("content", [b"", b"\n\n", b"Image Index,Wrong\nx.png,1\n"], ids=["empty", "blank", "header"])
def test_a_wrong_header_or_empty_file_is_a_user_error(tmp_path, content):
    path = tmp_path / "Data_Entry_2017_v2020.csv"
    path.write_bytes(content)
    with pytest.raises(UserError):
        read_nih_metadata(path)


def test_a_dicom_without_pixels_under_a_png_name_still_fails_cleanly(tmp_path):
    shutil.copy(DICOM, tmp_path / "scan.png")  # DICOM by its magic, whatever the name
    assert read_grayscale(tmp_path / "scan.png").dtype == np.uint8
