"""Balancing steps, hand-checked on small frames, and the seed 004 preset on a known frame."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrmodel.config import BalancingStep
from cxrmodel.data.balancing import PRESETS, apply_balancing, label_counts, preset_steps
from cxrmodel.findings import FINDINGS, NO_FINDING


def make_frame(groups: list[tuple[str, int]]) -> pd.DataFrame:
    """Rows from (``'A|B'`` label string or ``'No Finding'``, how many) pairs."""
    rows = []
    for labels, n in groups:
        names = [] if labels == NO_FINDING else labels.split("|")
        for _ in range(n):
            row = {f: np.uint8(f in names) for f in FINDINGS}
            row["study_key"] = f"{len(rows):06d}.png"
            row["labels"] = labels
            rows.append(row)
    return pd.DataFrame(rows)[["study_key", "labels", *FINDINGS]]


SMALL = [
    (NO_FINDING, 10),
    ("Infiltration", 4),
    ("Effusion|Infiltration", 2),
    ("Effusion", 3),
    ("Hernia", 1),
    ("Hernia|Mass", 1),
    ("Mass", 2),
]


@pytest.fixture
def small() -> pd.DataFrame:
    return make_frame(SMALL)


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


def test_counts_before(small):
    result = apply_balancing(small, [])
    assert nonzero(result.counts_before) == {"Infiltration": 6, "Effusion": 5, "Hernia": 2, "Mass": 3, NO_FINDING: 10}
    assert result.counts_after == result.counts_before
    assert result.frame["flip"].dtype == bool and not result.frame["flip"].any()
    assert isinstance(result.frame.index, pd.RangeIndex)


def test_keep_fraction_only_no_finding(small):
    result = apply_balancing(small, [BalancingStep(kind="keep_fraction_only", finding=NO_FINDING, fraction=0.3)])
    assert result.counts_after[NO_FINDING] == 3
    assert len(result.frame) == 16
    others = result.frame[result.frame["labels"] != NO_FINDING]
    assert others["study_key"].tolist() == small.loc[small["labels"] != NO_FINDING, "study_key"].tolist()


def test_keep_fraction_only_leaves_multi_label_rows(small):
    result = apply_balancing(small, [BalancingStep(kind="keep_fraction_only", finding="Infiltration", fraction=0.5)])
    after = result.frame["labels"].value_counts()
    assert after["Infiltration"] == 2
    assert after["Effusion|Infiltration"] == 2
    assert result.counts_after["Infiltration"] == 4
    assert len(result.frame) == 21


def test_keep_fraction_any(small):
    result = apply_balancing(small, [BalancingStep(kind="keep_fraction_any", finding="Infiltration", fraction=0.5)])
    assert result.counts_after["Infiltration"] == 3
    kept_both = int((result.frame["labels"] == "Effusion|Infiltration").sum())
    assert result.counts_after["Effusion"] == 3 + kept_both
    assert len(result.frame) == 20
    result = apply_balancing(small, [BalancingStep(kind="keep_fraction_any", finding=NO_FINDING, fraction=0.5)])
    assert result.counts_after[NO_FINDING] == 5 and len(result.frame) == 18


def test_flip_duplicate_under(small):
    result = apply_balancing(small, [BalancingStep(kind="flip_duplicate_under", count=4)])
    # Hernia (2) and Mass (3) are under 4; Infiltration (6) and Effusion (5) are not.
    assert len(result.frame) == 23 + 4  # Hernia, Hernia|Mass (once), Mass, Mass
    flipped = result.frame[result.frame["flip"]]
    assert sorted(flipped["labels"]) == ["Hernia", "Hernia|Mass", "Mass", "Mass"]
    assert nonzero(result.counts_after) == {"Infiltration": 6, "Effusion": 5, "Hernia": 4, "Mass": 6, NO_FINDING: 10}
    assert result.frame.iloc[:23]["study_key"].tolist() == small["study_key"].tolist()


def test_replicate_to_single_label():
    frame = make_frame([("Hernia", 2), ("Mass", 3), ("Effusion", 6)])
    result = apply_balancing(frame, [BalancingStep(kind="replicate_to", count=5)])
    assert nonzero(result.counts_after) == {"Hernia": 5, "Mass": 5, "Effusion": 6}
    assert len(result.frame) == 11 + 3 + 2
    assert not result.frame["flip"].any()
    assert set(result.frame["study_key"]) == set(frame["study_key"])  # copies only


def test_replicate_to_rarest_first_with_overlap(small):
    result = apply_balancing(small, [BalancingStep(kind="replicate_to", count=5)], seed=7)
    after = result.counts_after
    # Hernia (2) is done first: exactly +3 Hernia rows; Mass copies may add more Hernia.
    assert after["Hernia"] >= 5 and after["Mass"] >= 5
    assert after["Infiltration"] == 6 and after["Effusion"] == 5 and after[NO_FINDING] == 10
    added = result.frame.iloc[23:]
    assert added["labels"].isin(["Hernia", "Hernia|Mass", "Mass"]).all()
    assert added.iloc[:3]["Hernia"].eq(1).all()  # Hernia's three copies come first
    mass_from_hernia_copies = int(added.iloc[:3]["Mass"].sum())
    assert len(added) == 3 + max(0, 5 - (3 + mass_from_hernia_copies))


def test_deterministic_by_seed(small):
    steps = PRESETS["demo"] + [BalancingStep(kind="keep_fraction_any", finding="Infiltration", fraction=0.5)]
    a = apply_balancing(small, steps, seed=1).frame
    b = apply_balancing(small, steps, seed=1).frame
    pd.testing.assert_frame_equal(a, b)
    different = [
        apply_balancing(small, steps, seed=s).frame["study_key"].tolist() != a["study_key"].tolist() for s in range(2, 6)
    ]
    assert any(different)


def test_input_frame_is_not_modified(small):
    before = small.copy()
    apply_balancing(small, PRESETS["demo"])
    pd.testing.assert_frame_equal(small, before)


def test_presets():
    assert set(PRESETS) >= {"seed004", "demo", "none"}
    assert PRESETS["none"] == []
    assert [s.kind for s in PRESETS["seed004"]] == [
        "keep_fraction_only",
        "keep_fraction_only",
        "keep_fraction_only",
        "keep_fraction_only",
        "flip_duplicate_under",
        "replicate_to",
        "keep_fraction_any",
        "keep_fraction_any",
    ]
    assert preset_steps("demo") == PRESETS["demo"]
    with pytest.raises(ValueError, match="unknown balancing preset"):
        preset_steps("nope")


def test_seed004_preset_on_known_frame():
    frame = make_frame(
        [
            (NO_FINDING, 20000),
            ("Infiltration", 4000),
            ("Effusion", 2000),
            ("Atelectasis", 2000),
            ("Atelectasis|Effusion", 1000),
            ("Mass", 2000),
            ("Hernia", 100),
            ("Pneumonia", 800),
            ("Cardiomegaly", 3500),
        ]
    )
    result = apply_balancing(frame, PRESETS["seed004"], seed=0)
    assert nonzero(result.counts_before) == {
        NO_FINDING: 20000,
        "Infiltration": 4000,
        "Effusion": 3000,
        "Atelectasis": 3000,
        "Mass": 2000,
        "Hernia": 100,
        "Pneumonia": 800,
        "Cardiomegaly": 3500,
    }
    after = result.counts_after
    # keep-only: NF 2000, Inf 600, Eff-only 1000, Atel-only 1000; then every finding under
    # 3000 except Cardiomegaly (3500) is doubled by flipping; replicate_to 1500 lifts
    # Hernia 200 -> 1500 and Infiltration 1200 -> 1500; finally NF x0.25, Atelectasis x0.5.
    assert after[NO_FINDING] == 500
    assert after["Infiltration"] == 1500
    assert after["Hernia"] == 1500
    assert after["Pneumonia"] == 1600
    assert after["Mass"] == 4000
    assert after["Cardiomegaly"] == 3500
    assert after["Atelectasis"] == 2000
    both = int((result.frame["labels"] == "Atelectasis|Effusion").sum())
    assert after["Effusion"] == 2000 + both
    flips = result.frame.groupby("labels")["flip"].sum()
    assert flips["Mass"] == 2000 and flips["Pneumonia"] == 800 and flips["Cardiomegaly"] == 0
    assert label_counts(result.frame) == after
