"""Image decoding (PNG, DICOM), DICOM metadata, resizing and path safety."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cxrmodel.data.imaging import (
    ImageDecodeError,
    is_plain_file_name,
    parse_patient_age,
    read_dicom_metadata,
    read_grayscale,
    resize_square,
)


@pytest.fixture
def nih_png(fixtures_dir):
    return fixtures_dir / "nih-sample" / "images" / "00000001_000.png"


@pytest.fixture
def dicom_dir(fixtures_dir):
    return fixtures_dir / "dicom"


def test_real_nih_png_decodes(nih_png):
    image = read_grayscale(nih_png)
    assert image.shape == (1024, 1024)
    assert image.dtype == np.uint8
    # 8-bit grey passes through unchanged
    assert np.array_equal(image, np.asarray(Image.open(nih_png)))
    assert image.std() > 10


def test_16bit_png_is_minmax_scaled(tmp_path):
    values = np.zeros((40, 50), dtype=np.uint16)
    values[:, 10:20] = 1000
    values[:, 20:] = 4000  # a 12-bit image in a 16-bit container
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    image = read_grayscale(path)
    assert image.shape == (40, 50) and image.dtype == np.uint8
    assert image[0, 0] == 0
    assert image[0, 15] == round(1000 * 255 / 4000)  # 64
    assert image[0, 30] == 255


def test_rgba_png_converts_to_luma(tmp_path):
    rgba = np.zeros((32, 48, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 128
    path = tmp_path / "colour.png"
    Image.fromarray(rgba, "RGBA").save(path)
    image = read_grayscale(path)
    assert image.shape == (32, 48)
    expected = (200 * 299 + 100 * 587 + 50 * 114) / 1000  # ITU-R 601 luma, alpha ignored
    assert abs(int(image[5, 5]) - expected) <= 1
    assert np.all(image == image[0, 0])


def test_truncated_png_is_rejected(nih_png, tmp_path):
    data = nih_png.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError) as info:
        read_grayscale(cut)
    assert info.value.reason.startswith("corrupt or truncated image")


def test_garbage_file_is_rejected(tmp_path):
    bad = tmp_path / "noise.png"
    bad.write_bytes(b"this is not an image" * 20)
    with pytest.raises(ImageDecodeError, match="corrupt or truncated image"):
        read_grayscale(bad)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError) as info:
        read_grayscale(empty)
    assert info.value.reason == "empty file"
    with pytest.raises(ImageDecodeError) as info:
        read_grayscale(tmp_path / "nope.png")
    assert info.value.reason == "missing file"


def test_too_small_image_is_rejected(tmp_path):
    path = tmp_path / "tiny.png"
    Image.fromarray(np.full((16, 64), 7, dtype=np.uint8)).save(path)
    with pytest.raises(ImageDecodeError, match="too small: 64x16"):
        read_grayscale(path)


def test_dicoms_decode_and_monochrome1_is_inverted(dicom_dir):
    mono2 = read_grayscale(dicom_dir / "siim_cxr.dcm")
    mono1 = read_grayscale(dicom_dir / "monochrome1_cxr.dcm")
    assert mono2.shape == mono1.shape == (1024, 1024)
    assert mono2.dtype == mono1.dtype == np.uint8
    assert mono2.std() > 10
    import pydicom

    stored = pydicom.dcmread(dicom_dir / "siim_cxr.dcm").pixel_array
    assert np.array_equal(mono2, stored)  # plain 8-bit MONOCHROME2: stored values kept
    diff = np.abs(mono1.astype(int) - (255 - mono2.astype(int)))
    assert diff.max() <= 1


def test_dicom_detected_by_preamble_without_extension(dicom_dir, tmp_path):
    renamed = tmp_path / "study.bin"
    renamed.write_bytes((dicom_dir / "siim_cxr.dcm").read_bytes())
    assert np.array_equal(read_grayscale(renamed), read_grayscale(dicom_dir / "siim_cxr.dcm"))


def test_truncated_dicom_is_rejected(dicom_dir, tmp_path):
    data = (dicom_dir / "siim_cxr.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="corrupt or truncated image"):
        read_grayscale(cut)


def test_dicom_metadata(dicom_dir):
    meta = read_dicom_metadata(dicom_dir / "siim_cxr.dcm")
    assert meta["age"] == 62.0
    assert meta["sex"] == "M"
    assert meta["view"] == "PA"
    assert meta["patient_id"] == "16d7f894-55d7-4d95-8957-d18987f0e981"


@pytest.mark.parametrize(
    ("text", "years"),
    [("062Y", 62.0), ("62", 62.0), ("006M", 0.5), ("052W", 52 * 7 / 365.25), ("", None), ("abc", None), (None, None)],
)
def test_parse_patient_age(text, years):
    got = parse_patient_age(text)
    assert got == (pytest.approx(years) if years is not None else None)


def test_resize_square(nih_png):
    small = resize_square(read_grayscale(nih_png), 64)
    assert small.shape == (64, 64) and small.dtype == np.uint8
    flat = resize_square(np.full((100, 80), 90, dtype=np.uint8), 32)
    assert flat.shape == (32, 32) and np.all(flat == 90)
    with pytest.raises(ValueError):
        resize_square(np.zeros((4, 4, 3), dtype=np.uint8), 8)


def test_is_plain_file_name():
    assert is_plain_file_name("00000001_000.png")
    for bad in ("", ".", "..", "a/b.png", "a\\b.png", "../x.png"):
        assert not is_plain_file_name(bad)
