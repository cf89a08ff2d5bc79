"""Synthetic NIH-layout data: label/patient sampling, phantom rendering, dataset writing."""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from cxrmodel.config import SynthConfig
from cxrmodel.data.imaging import read_dicom_metadata, read_grayscale
from cxrmodel.data.metadata import read_nih_metadata
from cxrmodel.data.synth.dataset import FIRST_INCOMING_PATIENT, _render, generate_dataset, plan_studies
from cxrmodel.data.synth.labels import NIH_PREVALENCE
from cxrmodel.data.synth.phantom import _grid, render_phantom, sample_anatomy
from cxrmodel.findings import FINDINGS

KEY_RE = re.compile(r"^\d{8}_\d{3}\.png$")


# --------------------------------------------------------------------------------------
# plan_studies: labels and patient features, no pixels


@pytest.fixture(scope="module")
def specs():
    return plan_studies(4000, seed=0)


def _label_matrix(specs) -> np.ndarray:
    return np.array([[f in s.findings for f in FINDINGS] for s in specs], dtype=bool)


def test_plan_is_deterministic_per_seed(specs):
    again = plan_studies(4000, seed=0)
    assert again == specs
    other = plan_studies(4000, seed=1)
    assert [s.findings for s in other] != [s.findings for s in specs]
    assert [(s.age, s.sex) for s in other] != [(s.age, s.sex) for s in specs]


def test_plan_count_and_keys(specs):
    assert len(specs) == 4000
    keys = [s.key for s in specs]
    assert all(KEY_RE.match(k) for k in keys)
    assert len(set(keys)) == len(keys)
    for s in specs:
        assert s.key == f"{s.patient_id:08d}_{s.follow_up:03d}.png"
        assert s.view in ("PA", "AP")
        assert s.sex in ("M", "F")
        assert 1 <= s.age <= 99
        assert set(s.findings) <= set(FINDINGS)


def test_prevalence_matches_nih(specs):
    y = _label_matrix(specs)
    prevalence = y.mean(axis=0)
    for name in ("Infiltration", "Effusion", "Atelectasis"):
        j = FINDINGS.index(name)
        rel = abs(prevalence[j] - NIH_PREVALENCE[j]) / NIH_PREVALENCE[j]
        assert rel < 0.35, (name, prevalence[j], NIH_PREVALENCE[j])
    healthy = (~y.any(axis=1)).mean()
    assert 0.50 <= healthy <= 0.58
    # every rare finding appears at least once in 4000 draws except possibly Hernia (0.2 %)
    assert (y[:, [FINDINGS.index(f) for f in FINDINGS if f != "Hernia"]].sum(axis=0) > 0).all()


def test_follow_ups_of_a_patient_are_consistent(specs):
    by_patient = defaultdict(list)
    for s in specs:
        by_patient[s.patient_id].append(s)
    assert len(by_patient) > 1000  # about 2 studies per patient
    for pid, studies in by_patient.items():
        assert len({s.sex for s in studies}) == 1, pid
        assert [s.follow_up for s in studies] == list(range(len(studies)))
        ages = [s.age for s in studies]
        assert ages == sorted(ages) and ages[-1] - ages[0] <= len(studies) // 3 + 1
    # patient ids are consecutive from 1
    assert sorted(by_patient) == list(range(1, len(by_patient) + 1))


def test_cardiomegaly_grows_with_age(specs):
    y = _label_matrix(specs)[:, FINDINGS.index("Cardiomegaly")]
    age = np.array([s.age for s in specs])
    old, young = y[age >= 60].mean(), y[age < 40].mean()
    assert (age >= 60).sum() > 500 and (age < 40).sum() > 500
    assert old > 2.0 * young, (old, young)


def test_effusion_more_frequent_on_ap(specs):
    y = _label_matrix(specs)[:, FINDINGS.index("Effusion")]
    ap = np.array([s.view == "AP" for s in specs])
    assert 0.35 < ap.mean() < 0.45  # P_AP = 0.40
    assert y[ap].mean() > 1.8 * y[~ap].mean(), (y[ap].mean(), y[~ap].mean())


# --------------------------------------------------------------------------------------
# render_phantom

SIZE = 64


@pytest.fixture(scope="module")
def anatomy():
    return sample_anatomy(np.random.default_rng(3))


def _render_one(findings, anatomy, seed=5, view="PA"):
    return render_phantom(frozenset(findings), anatomy, np.random.default_rng(seed), size=SIZE, view=view)


def _coords(anatomy):
    """Image grid mapped into the anatomy's normalised frame (as render_phantom does)."""
    x0, y0 = _grid(SIZE)
    return (x0 - anatomy.shift_x) / anatomy.scale, (y0 - anatomy.shift_y) / anatomy.scale


def test_render_is_deterministic_uint8(anatomy):
    a = _render_one({"Effusion", "Nodule"}, anatomy, seed=11)
    b = _render_one({"Effusion", "Nodule"}, anatomy, seed=11)
    c = _render_one({"Effusion", "Nodule"}, anatomy, seed=12)
    assert a.dtype == np.uint8 and a.shape == (SIZE, SIZE)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    big = render_phantom(frozenset(), anatomy, np.random.default_rng(0), size=96)
    assert big.shape == (96, 96) and big.dtype == np.uint8
    # a radiograph, not a flat field: dark lungs, bright mediastinum, within 0..255
    assert 30 < a.std() and a.min() < 60 and a.max() > 120


@pytest.mark.parametrize("finding", FINDINGS)
def test_each_finding_changes_the_image(finding, anatomy):
    healthy = _render_one(set(), anatomy).astype(int)
    sick = _render_one({finding}, anatomy).astype(int)
    diff = np.abs(sick - healthy)
    # every sign is drawn at a visible intensity (at least ~0.2 of full scale somewhere)
    assert diff.max() > 50, (finding, diff.max())
    assert (diff > 20).sum() >= 10, (finding, (diff > 20).sum())


def test_healthy_lungs_darker_than_mediastinum(anatomy):
    img = _render_one(set(), anatomy).astype(float)
    x, y = _coords(anatomy)
    lungs = (np.abs(np.abs(x) - 0.37) < 0.12) & (np.abs(y + 0.1) < 0.25)
    spine = (np.abs(x) < 0.05) & (y < -0.3) & (y > -0.7)
    assert img[lungs].mean() + 40 < img[spine].mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cardiomegaly_widens_heart_to_image_right(anatomy, seed):
    healthy = _render_one(set(), anatomy, seed).astype(float)
    big_heart = _render_one({"Cardiomegaly"}, anatomy, seed).astype(float)
    x0, y0 = _grid(SIZE)
    # lateral to the normal heart border (centre 0.10, half-width <= 0.27 -> edge < 0.38),
    # inside the enlarged one (half-width * 1.55 >= 0.36 -> edge >= 0.46)
    region = (x0 > 0.40) & (x0 < 0.46) & (np.abs(y0 - 0.30) < 0.05)
    assert region.sum() >= 4
    assert big_heart[region].mean() > healthy[region].mean() + 30
    # the image's left side (patient's right lung) is untouched apart from noise
    left = (x0 < -0.3) & (np.abs(y0) < 0.3)
    assert abs(big_heart[left].mean() - healthy[left].mean()) < 2


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_effusion_whitens_the_lung_base(anatomy, seed):
    healthy = _render_one(set(), anatomy, seed).astype(float)
    fluid = _render_one({"Effusion"}, anatomy, seed).astype(float)
    x, y = _coords(anatomy)
    bases = (np.abs(np.abs(x) - 0.37) < 0.12) & (y > 0.30) & (y < 0.45)
    assert fluid[bases].mean() > healthy[bases].mean() + 20
    apices = (np.abs(np.abs(x) - 0.37) < 0.12) & (y > -0.45) & (y < -0.25)
    assert abs(fluid[apices].mean() - healthy[apices].mean()) < 3


def test_emphysema_darkens_the_lungs(anatomy):
    healthy = _render_one(set(), anatomy).astype(float)
    emph = _render_one({"Emphysema"}, anatomy).astype(float)
    x, y = _coords(anatomy)
    lungs = (np.abs(np.abs(x) - 0.37) < 0.15) & (y > -0.4) & (y < 0.3)
    assert emph[lungs].mean() < healthy[lungs].mean() - 10


@pytest.mark.parametrize("seed", range(4))
def test_pneumothorax_darkens_one_upper_lateral_lung(anatomy, seed):
    healthy = _render_one(set(), anatomy, seed).astype(float)
    ptx = _render_one({"Pneumothorax"}, anatomy, seed).astype(float)
    x, y = _coords(anatomy)
    changes = []
    for s in (-1, 1):
        cx = 0.37 * s
        r = np.sqrt(((x - cx) / anatomy.lung_width) ** 2 + ((y + 0.02) / anatomy.lung_height) ** 2)
        crescent = (r > 0.72) & (r < 0.92) & (y < 0.0) & (s * (x - cx) > 0)
        changes.append(ptx[crescent].mean() - healthy[crescent].mean())
    # one side goes black (no lung markings), the other is pixel-identical
    assert min(changes) < -25, changes
    assert abs(max(changes)) < 1, changes


def test_hernia_lucency_behind_heart(anatomy):
    healthy = _render_one(set(), anatomy).astype(float)
    hernia = _render_one({"Hernia"}, anatomy).astype(float)
    x, y = _coords(anatomy)
    air = np.hypot(x - 0.05, y - 0.42) < 0.08
    air &= y < 0.42
    assert hernia[air].mean() < healthy[air].mean() - 40


# --------------------------------------------------------------------------------------
# generate_dataset

CONFIG = SynthConfig(n_studies=60, n_incoming=8, image_size=64, seed=1)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    summary = generate_dataset(root, CONFIG, workers=1)
    return root, summary


def _read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_dataset_layout_and_csv(generated, fixtures_dir):
    root, summary = generated
    specs = plan_studies(CONFIG.n_studies, CONFIG.seed)
    real_header = (fixtures_dir / "nih-sample" / "Data_Entry_2017_v2020.sample.csv").read_text().splitlines()[0]
    lines = (root / "Data_Entry_2017_v2020.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == real_header
    rows = _read_rows(root / "Data_Entry_2017_v2020.csv")[1:]
    assert len(rows) == 60
    assert all(len(r) == 11 for r in rows)
    for row, spec in zip(rows, specs, strict=True):
        assert row[0] == spec.key
        labels = set(row[1].split("|"))
        assert labels == (set(spec.findings) or {"No Finding"})
        assert row[2:7] == [str(spec.follow_up), str(spec.patient_id), str(spec.age), spec.sex, spec.view]
        assert row[7:9] == ["64", "64"]
        assert float(row[9]) == pytest.approx(0.143 * 2500 / 64, abs=1e-3)
    images = sorted(p.name for p in (root / "images").iterdir())
    assert images == sorted(s.key for s in specs)
    assert summary.n_studies == 60 and summary.n_incoming == 8
    assert summary.n_patients == len({s.patient_id for s in specs})
    assert summary.n_no_finding == sum(1 for s in specs if not s.findings)
    assert summary.label_counts == {f: sum(f in s.findings for s in specs) for f in FINDINGS}


def test_png_pixels_are_the_rendered_phantom(generated):
    root, _ = generated
    for spec in plan_studies(CONFIG.n_studies, CONFIG.seed)[:3]:
        decoded = read_grayscale(root / "images" / spec.key)
        assert decoded.shape == (64, 64)
        assert np.array_equal(decoded, _render(spec, 64))


def test_split_lists_partition_by_patient(generated):
    root, _ = generated
    train = (root / "train_val_list.txt").read_text().split()
    test = (root / "test_list.txt").read_text().split()
    keys = [r[0] for r in _read_rows(root / "Data_Entry_2017_v2020.csv")[1:]]
    assert sorted(train + test) == sorted(keys)
    assert not set(train) & set(test)
    assert train and test
    patient = lambda k: k.split("_")[0]  # noqa: E731
    assert not {patient(k) for k in train} & {patient(k) for k in test}


def test_incoming_folder(generated):
    root, _ = generated
    incoming = root / "incoming"
    files = sorted(p.name for p in incoming.iterdir())
    specs = plan_studies(8, CONFIG.seed, first_patient=FIRST_INCOMING_PATIENT, stream=1)
    dicoms = [f for f in files if f.endswith(".dcm")]
    pngs = [f for f in files if f.endswith(".png")]
    assert len(dicoms) == 2 and len(pngs) == 6  # round(8 * 0.25) DICOMs
    assert set(files) == {*dicoms, *pngs, "metadata.csv"}
    assert dicoms == [s.key.replace(".png", ".dcm") for s in specs[:2]]
    assert all(int(f[:8]) >= FIRST_INCOMING_PATIENT for f in files if f != "metadata.csv")
    sidecar = _read_rows(incoming / "metadata.csv")
    assert sidecar[0] == ["Image Index", "Patient ID", "Patient Age", "Patient Gender", "View Position"]
    assert [r[0] for r in sidecar[1:]] == pngs
    for row, spec in zip(sidecar[1:], specs[2:], strict=True):
        assert row == [spec.key, str(spec.patient_id), str(spec.age), spec.sex, spec.view]
    truth = _read_rows(root / "incoming_truth.csv")
    assert sorted(r[0] for r in truth[1:]) == sorted(dicoms + pngs)
    assert not (root / "images" / dicoms[0]).exists()


def test_incoming_dicoms_decode_and_carry_patient_tags(generated):
    import pydicom

    root, _ = generated
    specs = plan_studies(8, CONFIG.seed, first_patient=FIRST_INCOMING_PATIENT, stream=1)
    for spec in specs[:2]:
        path = root / "incoming" / spec.key.replace(".png", ".dcm")
        rendered = _render(spec, 64)
        # the stored pixel data is the rendered phantom, byte for byte
        ds = pydicom.dcmread(path)
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 8
        assert np.array_equal(ds.pixel_array, rendered)
        # plain 8-bit DICOM (no rescale, no window) decodes to its stored values, like a PNG
        decoded = read_grayscale(path)
        assert decoded.dtype == np.uint8 and decoded.shape == (64, 64)
        assert np.array_equal(decoded, rendered)
        meta = read_dicom_metadata(path)
        assert meta == {"age": float(spec.age), "sex": spec.sex, "view": spec.view, "patient_id": str(spec.patient_id)}


def test_generation_is_byte_identical(generated, tmp_path):
    root, _ = generated
    generate_dataset(tmp_path, CONFIG, workers=1)
    for name in ("Data_Entry_2017_v2020.csv", "train_val_list.txt", "test_list.txt", "incoming_truth.csv"):
        assert (tmp_path / name).read_bytes() == (root / name).read_bytes(), name
    assert (tmp_path / "incoming" / "metadata.csv").read_bytes() == (root / "incoming" / "metadata.csv").read_bytes()
    for rel in sorted(p.relative_to(root) for p in (root / "images").iterdir())[:5]:
        assert (tmp_path / rel).read_bytes() == (root / rel).read_bytes(), rel
    for p in sorted((root / "incoming").iterdir()):
        assert (tmp_path / "incoming" / p.name).read_bytes() == p.read_bytes(), p.name


def test_generated_csv_parses_cleanly(generated):
    root, _ = generated
    result = read_nih_metadata(root / "Data_Entry_2017_v2020.csv")
    assert result.quarantined == []
    df = result.studies
    assert len(df) == 60
    specs = plan_studies(CONFIG.n_studies, CONFIG.seed)
    assert list(df["study_key"]) == [s.key for s in specs]
    expected = np.array([[f in s.findings for f in FINDINGS] for s in specs], dtype=np.uint8)
    assert np.array_equal(df[list(FINDINGS)].to_numpy(dtype=np.uint8), expected)
    assert list(df["no_finding"]) == [int(not s.findings) for s in specs]
    assert list(df["age"].astype(float)) == [float(s.age) for s in specs]
