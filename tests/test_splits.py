"""Patient-grouped, stratified splits; official NIH lists; leak detection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrmodel.data.splits import assert_no_patient_leak, assign_splits, read_official_lists
from cxrmodel.findings import FINDINGS


def synthetic_frame(n_patients: int = 800, seed: int = 1) -> pd.DataFrame:
    """~3,000 studies from ``n_patients`` patients with NIH-like label frequencies."""
    rng = np.random.default_rng(seed)
    per_patient = rng.integers(1, 8, size=n_patients)
    patients = np.repeat(np.arange(1, n_patients + 1), per_patient)
    n = len(patients)
    prevalence = np.array([0.10, 0.03, 0.12, 0.18, 0.05, 0.06, 0.01, 0.05, 0.04, 0.02, 0.02, 0.015, 0.03, 0.002])
    labels = (rng.random((n, len(FINDINGS))) < prevalence).astype(np.uint8)
    frame = pd.DataFrame(labels, columns=list(FINDINGS))
    frame.insert(0, "patient_id", patients.astype(str))
    frame.insert(0, "study_key", [f"{p:08d}_{i:03d}.png" for i, p in enumerate(patients)])
    return frame


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return synthetic_frame()


def test_grouped_split_proportions_and_no_leak(frame):
    assert 2500 <= len(frame) <= 3500
    split = assign_splits(frame, seed=0)
    assert split.index.equals(frame.index)
    assert set(split) == {"train", "val", "test"}
    shares = split.value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.72, abs=0.03)
    assert shares["val"] == pytest.approx(0.08, abs=0.02)
    assert shares["test"] == pytest.approx(0.20, abs=0.03)
    assert_no_patient_leak(frame.assign(split=split))
    # stratified: a common finding's prevalence is close in train and test
    for name in ("Infiltration", "Effusion"):
        rates = frame.groupby(split)[name].mean()
        assert abs(rates["train"] - rates["test"]) < 0.03


def test_split_is_deterministic_by_seed(frame):
    a = assign_splits(frame, seed=3)
    b = assign_splits(frame, seed=3)
    c = assign_splits(frame, seed=4)
    assert a.equals(b)
    assert not a.equals(c)


def test_fractions_are_parameters(frame):
    split = assign_splits(frame, val_fraction=0.10, test_fraction=0.25, seed=0)
    shares = split.value_counts(normalize=True)
    assert shares["test"] == pytest.approx(0.25, abs=0.03)
    assert shares["val"] == pytest.approx(0.10, abs=0.02)


def test_official_lists_are_honoured(frame, tmp_path):
    patients = sorted(frame["patient_id"].unique(), key=int)
    test_patients = set(patients[:200])
    unlisted_patients = set(patients[-100:])
    listed = frame[~frame["patient_id"].isin(unlisted_patients)]
    in_test = listed["patient_id"].isin(test_patients)
    (tmp_path / "train_val_list.txt").write_text("\n".join(listed.loc[~in_test, "study_key"]) + "\n")
    (tmp_path / "test_list.txt").write_text("\n".join(listed.loc[in_test, "study_key"]) + "\n")
    official = read_official_lists(tmp_path)
    assert official is not None and len(official) == len(listed)

    split = assign_splits(frame, seed=0, official=official)
    assert_no_patient_leak(frame.assign(split=split))
    listed_split = split[listed.index]
    assert (listed_split[in_test] == "test").all()
    assert set(listed_split[~in_test]) == {"train", "val"}
    val_share = (listed_split == "val").sum() / (~in_test).sum()
    assert val_share == pytest.approx(0.10, abs=0.03)  # 0.08 / (1 - 0.20)
    unlisted = split[frame["patient_id"].isin(unlisted_patients)]
    assert set(unlisted) == {"train", "val", "test"}  # went through the grouped split


def test_official_lists_need_both_files(tmp_path):
    assert read_official_lists(tmp_path) is None
    (tmp_path / "train_val_list.txt").write_text("a.png\n")
    assert read_official_lists(tmp_path) is None
    (tmp_path / "test_list.txt").write_text("b.png\n\n")
    assert read_official_lists(tmp_path) == {"a.png": "trainval", "b.png": "test"}
    (tmp_path / "test_list.txt").write_text("a.png\n")
    with pytest.raises(ValueError, match="both official lists"):
        read_official_lists(tmp_path)


def test_patient_with_an_official_test_study_goes_wholly_to_test():
    frame = synthetic_frame(n_patients=60, seed=2)
    first_patient = frame["patient_id"].iloc[0]
    keys = frame.loc[frame["patient_id"] == first_patient, "study_key"].tolist()
    official = {k: "trainval" for k in frame["study_key"]}
    official[keys[0]] = "test"
    split = assign_splits(frame, official=official)
    assert (split[frame["patient_id"] == first_patient] == "test").all()
    assert_no_patient_leak(frame.assign(split=split))


def test_leak_is_reported_by_patient():
    df = pd.DataFrame({"patient_id": ["1", "1", "2", "3", "3"], "split": ["train", "test", "val", "val", "val"]})
    with pytest.raises(AssertionError, match=r"1 patient\(s\).*1 \['test', 'train'\]"):
        assert_no_patient_leak(df)
    assert_no_patient_leak(df.iloc[2:])


def test_missing_columns_are_reported():
    with pytest.raises(ValueError, match="patient_id"):
        assign_splits(pd.DataFrame({"x": [1]}))
