"""NIH metadata parsing (real sample and hand-made bad rows), image lookup, patient features."""

from __future__ import annotations

import numpy as np
import pytest

from cxrmodel.data.metadata import (
    OUTPUT_COLUMNS,
    AgeScaler,
    expand_header,
    labels_matrix,
    locate_images,
    patient_features,
    read_nih_metadata,
)
from cxrmodel.findings import FINDINGS

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
GOOD_1 = "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143"
GOOD_2 = "00000002_000.png,No Finding,0,2,80,F,AP,2500,2048,0.171,0.171"


@pytest.fixture
def sample_csv(fixtures_dir):
    return fixtures_dir / "nih-sample" / "Data_Entry_2017_v2020.sample.csv"


def write_csv(tmp_path, *rows, header=HEADER, name="meta.csv"):
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_header_expansion():
    names = expand_header(HEADER.split(","))
    assert len(names) == 11
    assert names[7:] == [
        "OriginalImage.Width",
        "OriginalImage.Height",
        "OriginalImagePixelSpacing.x",
        "OriginalImagePixelSpacing.y",
    ]
    assert expand_header([*HEADER.split(","), ""]) == names  # old file's trailing column


def test_real_sample_parses(sample_csv):
    result = read_nih_metadata(sample_csv)
    studies = result.studies
    assert result.quarantined == []
    assert len(studies) == 199
    assert list(studies.columns) == list(OUTPUT_COLUMNS)
    assert studies["patient_id"].nunique() == 40
    first = studies[studies["patient_id"] == "1"].iloc[0]
    assert first["study_key"] == "00000001_000.png"
    assert first["follow_up"] == 0
    assert first["age"] == 57.0
    assert first["sex"] == "M" and first["view"] == "PA"
    assert first["width"] == 2682 and first["height"] == 2749
    assert first["Cardiomegaly"] == 1
    assert int(first[list(FINDINGS)].sum()) == 1 and first["no_finding"] == 0
    second = studies.iloc[1]  # Cardiomegaly|Emphysema
    assert second["Cardiomegaly"] == 1 and second["Emphysema"] == 1
    no_finding = studies[studies["study_key"] == "00000002_000.png"].iloc[0]
    assert no_finding["no_finding"] == 1 and int(no_finding[list(FINDINGS)].sum()) == 0
    assert studies[list(FINDINGS)].dtypes.eq(np.uint8).all()
    assert set(studies["sex"]) == {"M", "F"} and set(studies["view"]) == {"PA", "AP"}
    # the counts in the file: 64 F/AP, 26 F/PA, 33 M/AP, 76 M/PA
    assert ((studies["sex"] == "M") & (studies["view"] == "PA")).sum() == 76
    assert ((studies["sex"] == "F") & (studies["view"] == "AP")).sum() == 64


def test_old_format_parses(sample_csv, tmp_path):
    lines = sample_csv.read_text(encoding="utf-8").splitlines()
    old = [lines[0] + ","]
    for line in lines[1:21]:
        cells = line.split(",")
        cells[4] = f"{int(cells[4]):03d}Y"
        old.append(",".join(cells) + ",")
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text("\n".join(old) + "\n", encoding="utf-8")
    result = read_nih_metadata(path)
    assert result.quarantined == []
    assert len(result.studies) == 20
    assert result.studies.loc[0, "age"] == 57.0
    assert result.studies.loc[0, "width"] == 2682
    new = read_nih_metadata(sample_csv).studies.head(20)
    assert result.studies.equals(new)


@pytest.mark.parametrize(
    ("bad_row", "reason"),
    [
        ("00000009_000.png,Mass,0,9,50,M,PA,2500,2048,0.1", "wrong number of fields"),
        ("00000009_000.png,Mass,zero,9,50,M,PA,2500,2048,0.1,0.1", "malformed number in Follow-up #"),
        ("00000009_000.png,Mass,0,9,fifty,M,PA,2500,2048,0.1,0.1", "malformed number in Patient Age"),
        ("00000009_000.png,Mass,0,9,50,M,PA,wide,2048,0.1,0.1", "malformed number in OriginalImage.Width"),
        ("00000009_000.png,Mass|Tumour,0,9,50,M,PA,2500,2048,0.1,0.1", "unknown finding name(s): Tumour"),
        ("00000009_000.png,Mass,0,9,150,M,PA,2500,2048,0.1,0.1", "age outside 0-120"),
        ("00000009_000.png,Mass,0,9,50,X,PA,2500,2048,0.1,0.1", "unknown sex"),
        ("00000009_000.png,Mass,0,9,50,M,LL,2500,2048,0.1,0.1", "unknown view position"),
        ("../etc/x.png,Mass,0,9,50,M,PA,2500,2048,0.1,0.1", "not a plain file name"),
        ("images/x.png,Mass,0,9,50,M,PA,2500,2048,0.1,0.1", "not a plain file name"),
        ("00000001_000.png,Mass,0,1,50,M,PA,2500,2048,0.1,0.1", "duplicate Image Index"),
    ],
)
def test_bad_rows_are_quarantined(tmp_path, bad_row, reason):
    path = write_csv(tmp_path, GOOD_1, bad_row, GOOD_2)
    result = read_nih_metadata(path)
    assert list(result.studies["study_key"]) == ["00000001_000.png", "00000002_000.png"]
    assert result.studies.loc[0, "Cardiomegaly"] == 1  # the duplicate did not replace the first
    assert len(result.quarantined) == 1
    record = result.quarantined[0]
    assert reason in record.reason
    assert record.row_number == 3  # header is line 1
    assert record.raw == bad_row
    assert record.row_key == bad_row.split(",")[0]


def test_many_bad_rows_never_stop_the_parse(tmp_path):
    rows = [GOOD_1, "garbage", "", "a,b", GOOD_2, "00000003_000.png,Mass,0,3,50,Q,PA,1,1,1,1"]
    result = read_nih_metadata(write_csv(tmp_path, *rows))
    assert len(result.studies) == 2
    assert [q.row_number for q in result.quarantined] == [3, 5, 7]


def test_malformed_header_raises(tmp_path):
    path = write_csv(tmp_path, GOOD_1, header="Image Index,Finding Labels,Patient ID")
    with pytest.raises(ValueError, match="missing required column.*Follow-up #"):
        read_nih_metadata(path)
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        read_nih_metadata(empty)


def test_locate_images(tmp_path):
    (tmp_path / "images_001" / "images").mkdir(parents=True)
    (tmp_path / "images_012" / "images").mkdir(parents=True)
    (tmp_path / "images").mkdir()
    (tmp_path / "images_001" / "images" / "a.png").write_bytes(b"x")
    (tmp_path / "images_012" / "images" / "b.png").write_bytes(b"x")
    (tmp_path / "images" / "c.png").write_bytes(b"x")
    found = locate_images(tmp_path, ["a.png", "b.png", "c.png", "missing.png"])
    assert found == {
        "a.png": tmp_path / "images_001" / "images" / "a.png",
        "b.png": tmp_path / "images_012" / "images" / "b.png",
        "c.png": tmp_path / "images" / "c.png",
    }


def test_locate_real_sample(fixtures_dir, sample_csv):
    keys = read_nih_metadata(sample_csv).studies["study_key"]
    found = locate_images(fixtures_dir / "nih-sample", keys)
    assert sorted(found) == ["00000001_000.png", "00000002_000.png", "00000013_003.png"]


def test_age_scaler_and_patient_features():
    import pandas as pd

    scaler = AgeScaler.fit([20.0, 40.0, 60.0, None])
    assert (scaler.min_age, scaler.max_age, scaler.median_age) == (20.0, 60.0, 40.0)
    assert AgeScaler.from_dict(scaler.to_dict()) == scaler
    df = pd.DataFrame(
        {"age": [20.0, 60.0, 90.0, None, 10.0], "sex": ["M", "F", "F", None, "M"], "view": ["PA", "AP", None, "AP", "PA"]}
    )
    feats = patient_features(df, scaler)
    assert feats.dtype == np.float32 and feats.shape == (5, 3)
    np.testing.assert_allclose(feats[:, 0], [0.0, 1.0, 1.0, 0.5, 0.0])  # clipped; missing -> median
    np.testing.assert_array_equal(feats[:, 1], [0, 1, 1, 0, 0])
    np.testing.assert_array_equal(feats[:, 2], [0, 1, 0, 1, 0])
    with pytest.raises(ValueError):
        AgeScaler.fit([None])


def test_labels_matrix(sample_csv):
    studies = read_nih_metadata(sample_csv).studies
    y = labels_matrix(studies)
    assert y.shape == (199, 14) and y.dtype == np.uint8
    assert y[0].tolist() == [0, 1] + [0] * 12
    assert (y.sum(axis=1) == 0).sum() == studies["no_finding"].sum()
